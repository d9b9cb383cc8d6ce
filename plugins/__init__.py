"""zoo-adapt's built-in backbone plugins, installed as `zoo_adapt_plugins` and registered
through the `zoo_adapt` entry-point group exactly as a third-party plugin is.

Plugin modules import no torch at import time (so `zoo-adapt list` stays fast); they
import torchvision or timm inside the hooks that build models."""
