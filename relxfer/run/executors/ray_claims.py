"""Cell claims every driver on a Ray cluster shares, so two drivers of one spec never run a cell
twice (the local executor's file locks only coordinate processes of one machine).

The claim service is a detached named actor (`relxfer-claims` in namespace `relxfer`), created
by the first driver that needs it (`get_if_exists`, which Ray makes atomic) and found by every
later one. A claim belongs to a driver, named by a small actor of the driver's own
(`DriverLease`). Ray ties a non-detached actor's life to its owner: when the driver exits or is
killed, Ray kills its lease actor along with the driver's tasks, and the service sees a claim
whose lease no longer answers as free. A crashed driver therefore never leaves a cell claimed,
and a driver that is merely slow keeps its claims (a lease that does not answer in time counts
as alive).

Why an actor and not the tracking server: MLflow has no atomic compare-and-set to build a lock
on, and a lock built from heartbeats there would need a timeout long enough to survive a busy
server, which a re-run after a crash would then have to wait out. The actor gives atomic
check-and-set (one method at a time between awaits) and liveness from Ray itself.
"""

from __future__ import annotations

import asyncio
import uuid

import ray

NAMESPACE = "relxfer"
SERVICE_NAME = "relxfer-claims"
LEASE_TIMEOUT_S = 10.0  # a lease that answers no sooner is taken as alive (busy), never as dead


@ray.remote(num_cpus=0)
class DriverLease:
    """Lives exactly as long as the driver that created it."""

    def ping(self) -> bool:
        return True


@ray.remote(num_cpus=0, max_restarts=-1)
class ClaimService:
    def __init__(self):
        self._holders: dict[str, tuple[str, object]] = {}  # cell key -> (owner id, owner's lease)

    async def acquire(self, keys: list[str], owner_id: str, lease) -> list[str]:
        """Claim every key that is free (or held by a driver that is gone) for `owner_id`;
        returns the keys now held by `owner_id`."""
        granted, alive = [], {}  # each other owner is asked once per call
        for key in keys:
            held = self._holders.get(key)
            if held is not None and held[0] != owner_id:
                if held[0] not in alive:
                    alive[held[0]] = await self._alive(held[1])
                if alive[held[0]]:
                    continue
            current = self._holders.get(key)
            if current is not None and current is not held:
                continue  # another driver took it while this one looked at the old holder
            self._holders[key] = (owner_id, lease)
            granted.append(key)
        return granted

    async def release(self, keys: list[str], owner_id: str) -> None:
        for key in keys:
            if self._holders.get(key, (None,))[0] == owner_id:
                del self._holders[key]

    async def holders(self) -> dict[str, str]:
        return {key: owner for key, (owner, _) in self._holders.items()}

    @staticmethod
    async def _alive(lease) -> bool:
        try:
            await asyncio.wait_for(lease.ping.remote(), LEASE_TIMEOUT_S)
            return True
        except ray.exceptions.RayActorError:
            return False
        except asyncio.TimeoutError:
            return True


class ClusterClaims:
    """A driver's side of the claim service."""

    def __init__(self):
        self.owner_id = uuid.uuid4().hex
        self.lease = DriverLease.remote()
        self.service = ClaimService.options(
            name=SERVICE_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote()
        self.held: set[str] = set()

    def acquire(self, keys: list[str]) -> set[str]:
        """The keys of `keys` this driver now holds (those it held already included)."""
        wanted = [k for k in keys if k not in self.held]
        if wanted:
            self.held |= set(ray.get(self.service.acquire.remote(wanted, self.owner_id, self.lease)))
        return {k for k in keys if k in self.held}

    def release(self, keys) -> None:
        keys = [k for k in keys if k in self.held]
        if keys:
            ray.get(self.service.release.remote(keys, self.owner_id))
            self.held -= set(keys)

    def release_all(self) -> None:
        self.release(list(self.held))
