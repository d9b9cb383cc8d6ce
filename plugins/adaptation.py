"""The built-in domain-adaptation methods: DANN (Ganin et al., JMLR 2016) and MCC
(Jin et al., ECCV 2020). Registered like any third party's; the torch code is imported
only when a method is built."""
from zoo_adapt.plugin_api import hookimpl


def make_dann(in_features, num_classes, config):
    from ._adaptation_methods import DANN

    return DANN(in_features, num_classes, config)


def make_mcc(in_features, num_classes, config):
    from ._adaptation_methods import MCC

    return MCC(in_features, num_classes, config)


@hookimpl
def register_adaptation_methods(register):
    register("dann", make_dann, "domain classifier behind a gradient-reversal layer on the pooled "
             "features (Ganin et al. 2016)")
    register("mcc", make_mcc, "minimum class confusion on target predictions, label-free "
             "(Jin et al. 2020)")
