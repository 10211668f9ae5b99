"""onebit: 1-bit LAMB and 1-bit Adam for PyTorch, over torch.distributed (Gloo on CPU, NCCL on GPU).

    opt = onebit.OnebitLamb(model.parameters(), lr=1e-3, freeze_step=1000)
    loss.backward(); opt.step(); opt.zero_grad()   # .grad is this rank's local gradient

Without an initialized torch.distributed process group the optimizers run as world size 1.
"""
import torch  # noqa: F401  (loads libtorch before the extension that links it)

from ._onebit import Error, torch_version_built
from .optim import Lamb, OnebitAdam, OnebitLamb

__all__ = ["Lamb", "OnebitLamb", "OnebitAdam", "Error"]
__version__ = "0.1.0"


def _check_torch_version():
    # The extension's C++ ABI is that of the torch it was built against.
    running = ".".join(torch.__version__.split(".")[:2])
    if running != torch_version_built:
        raise ImportError("onebit was built against torch %s but torch %s is imported; rebuild onebit"
                          % (torch_version_built, torch.__version__))


_check_torch_version()
