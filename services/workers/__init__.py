"""Ray actors and the pool that spreads slices over them (wrapping ``services.recon``).

``connect_ray(settings)`` joins or starts a cluster; ``WorkerPool.from_settings(settings)``
starts the actors; ``pool.reconstruct(kspace, mask, multicoil, options, on_result)`` returns
one ``SliceResult`` per slice, in order.
"""

from services.workers.actor import ActorInfo, ReconActor
from services.workers.cluster import RayConnection, connect_ray, disconnect_ray
from services.workers.errors import WorkerError
from services.workers.pool import WorkerPool

__all__ = [
    "ActorInfo",
    "RayConnection",
    "ReconActor",
    "WorkerError",
    "WorkerPool",
    "connect_ray",
    "disconnect_ray",
]
