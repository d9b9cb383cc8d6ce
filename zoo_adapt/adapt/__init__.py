"""Domain adaptation: the method base class plugins subclass (with the gradient
reversal layer), the loop callback that feeds target images to a method, BatchNorm
statistics of the target domain (AdaBN), the domain gap, and the label-free scores
of target predictions."""
