"""vn.py integration: `TradeplexGateway`, a vn.py `BaseGateway` that trades through a
Tradeplex cluster (the successor of vn.py's `RpcGateway`). Needs ``pip install
./python[vnpy]``.
"""

from .gateway import TradeplexGateway

__all__ = ["TradeplexGateway"]
