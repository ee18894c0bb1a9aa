"""Any ``torch.nn.Module`` analysed by vgcore: :class:`TorchModel` views it as a chain of
blocks (discovered automatically or named), and the analyses run through ``torch.func`` and
autograd on the module's own device and dtype.

``import vgcore.torchmodel`` does not import torch; the submodules that compute do
(``blocks``, ``flow``, ``jacobians``, ``cell``, ``signal``).
"""

from __future__ import annotations

from vgcore.torchmodel.model import BlockChainWarning, TorchModel

__all__ = ["BlockChainWarning", "TorchModel"]
