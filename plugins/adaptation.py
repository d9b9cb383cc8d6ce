"""The built-in domain-adaptation methods: DANN (Ganin et al., JMLR 2016), MCC (Jin et
al., ECCV 2020) and AdaBN (Li et al., 2016). Registered like any third party's, with the
options and figures each declares; the torch code is imported only when a method is built."""

from zoo_adapt.plugin_api import hookimpl, option

DANN_OPTIONS = [
    option("width", 256, "Width of the domain discriminator's hidden layers.", low=1),
    option("depth", 2, "Hidden layers of the domain discriminator.", low=1),
    option("dropout", 0.5, "Dropout after the discriminator's first hidden layer.", low=0, high=1, high_open=True),
    option("gamma", 10.0, "How fast lambda rises: 2 / (1 + exp(-gamma p)) - 1, p the fraction of steps done.", low=0),
    option("lr_factor", 1.0, "The discriminator's learning rate, as a multiple of the head's.", low=0, low_open=True),
]
DANN_FIGURES = {
    "domain_loss": "the discriminator's BCE (ln 2 = 0.69: it cannot tell the domains apart)",
    "domain_accuracy": "the discriminator's accuracy on the step's source and target features",
    "lambda": "the reversal coefficient, times --adapt-weight",
}
MCC_OPTIONS = [option("temperature", 2.5, "Softmax temperature of the target predictions.", low=0, low_open=True)]
MCC_FIGURES = {"mcc_loss": "the class confusion of the step's target predictions (0: none)"}


def make_dann(in_features, num_classes, config):
    from ._adaptation_methods import DANN

    return DANN(in_features, num_classes, config)


def make_mcc(in_features, num_classes, config):
    from ._adaptation_methods import MCC

    return MCC(in_features, num_classes, config)


def make_adabn(in_features, num_classes, config):
    from ._adaptation_methods import AdaBN

    return AdaBN(in_features, num_classes, config)


@hookimpl
def register_adaptation_methods(register):
    register(
        "dann",
        make_dann,
        "domain discriminator behind a gradient-reversal layer on the pooled features (Ganin et al. 2016)",
        options=DANN_OPTIONS,
        figures=DANN_FIGURES,
    )
    register(
        "mcc",
        make_mcc,
        "minimum class confusion on target predictions, label-free (Jin et al. 2020)",
        options=MCC_OPTIONS,
        figures=MCC_FIGURES,
    )
    register(
        "adabn",
        make_adabn,
        "source-only training, then BatchNorm statistics of the target images "
        "(Li et al. 2016; needs --target-bn target, the default)",
        options=[],
        figures={},
    )
