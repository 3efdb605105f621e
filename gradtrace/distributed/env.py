"""Which rank this process is, read from the ``env://`` variables torchrun sets (no torch here).

``torchrun`` (``python -m torch.distributed.run``) starts one process per rank
and tells each who it is through the environment: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous ``MASTER_ADDR`` / ``MASTER_PORT``. Several
nodes use the same variables (each node's torchrun sets them), so detection
is the same on one machine or many.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from ..errors import GradtraceError

__all__ = ["RankInfo", "rank_info"]


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a distributed run.

    >>> RankInfo(rank=1, world_size=2, local_rank=1, master_addr="127.0.0.1", master_port=29500).is_main
    False
    """

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    run_id: str = ""  # torchrun's TORCHELASTIC_RUN_ID and restart count: keys of one run never meet another's

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes."""
        return self.rank == 0


def _int_var(env: Mapping[str, str], name: str, minimum: int) -> int:
    text = env.get(name, "")
    try:
        value = int(text)
    except ValueError:
        raise GradtraceError(f"the environment variable {name}={text!r} is not an integer; torchrun sets it to "
                             f"one (at least {minimum}): run gradtrace under torchrun, or unset RANK and WORLD_SIZE") from None
    if value < minimum:
        raise GradtraceError(f"the environment variable {name}={value} must be at least {minimum}")
    return value


def rank_info(env: Mapping[str, str] | None = None) -> RankInfo | None:
    """This process's rank from ``env`` (default ``os.environ``); None when not started by torchrun.

    A run counts as distributed when ``WORLD_SIZE`` is set, even to 1 (one
    rank under torchrun writes the same multi-rank file as many).

    >>> rank_info({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}).rank
    1
    >>> rank_info({}) is None
    True
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    world = _int_var(env, "WORLD_SIZE", 1)
    rank = _int_var(env, "RANK", 0) if "RANK" in env else 0
    if rank >= world:
        raise GradtraceError(f"RANK={rank} is not below WORLD_SIZE={world} (ranks are numbered 0 to WORLD_SIZE-1)")
    local = _int_var(env, "LOCAL_RANK", 0) if "LOCAL_RANK" in env else rank
    addr = env.get("MASTER_ADDR", "127.0.0.1") or "127.0.0.1"
    port = _int_var(env, "MASTER_PORT", 1) if "MASTER_PORT" in env else 29500
    run_id = f"{env.get('TORCHELASTIC_RUN_ID', '')}.{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return RankInfo(rank, world, local, addr, port, run_id)
