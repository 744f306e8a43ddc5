"""The scheduler's waiting queue: fair between clients, first come first served within one.

Requests born from one client request (an HTTP request's n generations x its prompts) share a
`Request.group`; a request without one is a group of its own. Admission takes groups round-robin: the
head of the first group in the rotation, after which that group goes to the back. So a client whose
request fans out into 64 generations cannot make a later one-generation client wait for all of them:
the small request waits for at most one admission per other waiting group. With every request in its
own group (the Python API, one-prompt requests) this is plain arrival order.

Preempted requests were already running; they come back before every group, newest preemption first,
as the scheduler's recompute-later policy wants. Every operation the scheduler's step uses is O(1).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator

from llamarun.engine.request import Request


def group_of(req: Request) -> str:
    """The client group `req` is admitted in: its `group`, else its own id."""
    return req.group if req.group is not None else req.request_id


class FairQueue:
    """Waiting requests: resumed (preempted) ones first, then groups round-robin, each group in arrival order."""

    def __init__(self) -> None:
        self._resumed: deque[Request] = deque()
        self._groups: OrderedDict[str, deque[Request]] = OrderedDict()  # first key: the next group to serve
        self._size = 0

    def append(self, req: Request) -> None:
        """A newly arrived request joins the back of its group (a new group joins the back of the rotation)."""
        queue = self._groups.get(group_of(req))
        if queue is None:
            queue = self._groups[group_of(req)] = deque()
        queue.append(req)
        self._size += 1

    def appendleft(self, req: Request) -> None:
        """A preempted request: it goes before everything that has not run yet."""
        self._resumed.appendleft(req)
        self._size += 1

    def peek(self) -> Request:
        """The request the next admission takes (IndexError when empty)."""
        if self._resumed:
            return self._resumed[0]
        if not self._groups:
            raise IndexError("peek from an empty FairQueue")
        return next(iter(self._groups.values()))[0]

    def popleft(self) -> Request:
        """Take the request `peek` names; its group moves to the back of the rotation."""
        if self._resumed:
            self._size -= 1
            return self._resumed.popleft()
        if not self._groups:
            raise IndexError("pop from an empty FairQueue")
        key, queue = next(iter(self._groups.items()))
        req = queue.popleft()
        if queue:
            self._groups.move_to_end(key)
        else:
            del self._groups[key]
        self._size -= 1
        return req

    def remove(self, req: Request) -> None:
        """Take `req` out wherever it waits (an abort); ValueError when it is not here."""
        if not _remove_same(self._resumed, req):
            key = group_of(req)
            queue = self._groups.get(key)
            if queue is None or not _remove_same(queue, req):
                raise ValueError(f"request {req.request_id!r} is not waiting")
            if not queue:
                del self._groups[key]
        self._size -= 1

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[Request]:
        """Every waiting request: the resumed ones, then each group's in rotation order (not admission order)."""
        yield from self._resumed
        for queue in self._groups.values():
            yield from queue


def _remove_same(queue: deque[Request], req: Request) -> bool:
    """Remove `req` itself (by identity: Requests compare by value) from `queue`; whether it was there."""
    for i, other in enumerate(queue):
        if other is req:
            del queue[i]
            return True
    return False
