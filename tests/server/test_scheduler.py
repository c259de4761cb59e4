"""The continuous-batching scheduler, driven with a fake clock and fake finishing (no model, no torch)."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

import pytest

from mtserve.server.errors import QueueFullError, ValidationError
from mtserve.server.scheduler import AbortReason, Scheduler, SequenceGroup


def g(group_id, slots=1, tokens=10, t=0.0, request=None, deadline=None) -> SequenceGroup:
    return SequenceGroup(group_id, slots=slots, source_tokens=tokens, arrival_time=t, request_id=request,
                         deadline=deadline)


def make(max_batch_size=8, max_batch_tokens=1000, max_queue=100, policy="fifo") -> Scheduler:
    return Scheduler(max_batch_size, max_batch_tokens, max_queue, policy=policy)


def test_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import mtserve.server.scheduler"  # torch import would fail
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_fifo_admission_in_arrival_order():
    s = make()
    s.submit([g("a"), g("b")])
    s.submit([g("c")])
    out = s.schedule(now=1.0)
    assert out.admitted_ids == ["a", "b", "c"]
    assert all(x.admitted_time == 1.0 for x in out.admitted)
    assert (out.num_waiting, out.num_running, out.slots_in_use) == (0, 3, 3)


def test_slot_limit_and_update_frees_slots():
    s = make(max_batch_size=10)
    s.submit([g("a", slots=4), g("b", slots=4), g("c", slots=4)])
    assert s.schedule(0).admitted_ids == ["a", "b"]
    assert (s.num_running, s.num_waiting, s.slots_in_use, s.free_slots) == (2, 1, 8, 2)
    assert s.usage_ratio == pytest.approx(0.8)
    assert s.schedule(1).admitted_ids == []  # nothing finished: no room
    s.update(["a"])
    assert s.slots_in_use == 4
    assert s.schedule(2).admitted_ids == ["c"]
    assert s.slots_in_use == 8


def test_continuous_batching_short_joins_while_long_runs():
    s = make(max_batch_size=4)
    s.submit([g("long")])
    assert s.schedule(0).admitted_ids == ["long"]
    for step in range(1, 4):  # the long one keeps decoding...
        assert s.schedule(step).admitted_ids == []
    s.submit([g("short")])
    assert s.schedule(4).admitted_ids == ["short"]  # ...and the short one joins at the next step
    s.update(["short"])
    assert s.num_running == 1


def test_oldest_is_never_bypassed():
    for policy in ("fifo", "shortest_first"):
        s = make(max_batch_size=8, policy=policy)
        s.submit([g("running", slots=6)])
        s.schedule(0)
        s.submit([g("beam", slots=4), g("small", slots=1, tokens=1)])
        assert s.schedule(1).admitted_ids == [], policy  # 2 slots free: the beam group waits, so does "small"
        s.update(["running"])
        assert s.schedule(2).admitted_ids == ["beam", "small"], policy


def test_token_budget_per_step():
    s = make(max_batch_tokens=100)
    s.submit([g("a", tokens=60), g("b", tokens=30), g("c", tokens=20), g("d", tokens=5)])
    out = s.schedule(0)
    assert out.admitted_ids == ["a", "b"] and out.admitted_tokens == 90
    assert s.schedule(1).admitted_ids == ["c", "d"]  # the budget is per step


def test_group_larger_than_the_budget_runs_alone():
    s = make(max_batch_tokens=100)
    s.submit([g("small", tokens=10), g("huge", tokens=500), g("after", tokens=10)])
    assert s.schedule(0).admitted_ids == ["small"]
    assert s.schedule(1).admitted_ids == ["huge"]  # first of its step: admitted alone, over the budget
    assert s.schedule(2).admitted_ids == ["after"]


def test_shortest_first_fills_the_room_with_short_sources():
    s = make(max_batch_size=3, max_batch_tokens=1000, policy="shortest_first")
    s.submit([g("old", tokens=300), g("mid", tokens=200), g("short", tokens=5), g("tiny", tokens=1)])
    assert s.schedule(0).admitted_ids == ["old", "tiny", "short"]  # the oldest first, then shortest
    s.update(["old", "tiny", "short"])
    assert s.schedule(1).admitted_ids == ["mid"]
    fifo = make(max_batch_size=3, policy="fifo")
    fifo.submit([g("old", tokens=300), g("mid", tokens=200), g("short", tokens=5), g("tiny", tokens=1)])
    assert fifo.schedule(0).admitted_ids == ["old", "mid", "short"]


def test_shortest_first_skips_what_does_not_fit_but_fifo_stops():
    for policy, expected in (("fifo", ["a"]), ("shortest_first", ["a", "c"])):
        s = make(max_batch_size=4, policy=policy)
        s.submit([g("a", slots=2, tokens=50), g("b", slots=4, tokens=10), g("c", slots=1, tokens=20)])
        assert s.schedule(0).admitted_ids == expected, policy


@pytest.mark.parametrize("policy", ["fifo", "shortest_first"])
def test_no_starvation_under_a_stream_of_short_requests(policy):
    """A beam-search text arriving behind short ones is admitted within a bounded number of steps.

    The short ones keep the batch nearly full (2 arrive per step and each runs 4 steps: 2 rows are
    free after every update), so a scheduler that let them pass a blocked group would never find
    the 4 rows the beam group needs.
    """
    s = make(max_batch_size=8, max_batch_tokens=64, max_queue=1000, policy=policy)
    running: dict[str, int] = {}  # id -> steps left
    admitted_at = {}
    counter = 0
    for step in range(200):
        for _ in range(2):  # two short arrivals per step, forever
            s.submit([g(f"s{counter}", slots=1, tokens=8, t=step)])
            counter += 1
        if step == 5:
            s.submit([g("long", slots=4, tokens=500, t=step)])
        out = s.schedule(step)
        for x in out.admitted:
            admitted_at[x.group_id] = step
            running[x.group_id] = 4 if x.group_id != "long" else 10
        finished = [k for k, left in running.items() if left == 1]
        running = {k: left - 1 for k, left in running.items() if left > 1}
        s.update(finished)
        if "long" in admitted_at and admitted_at["long"] + 10 < step:
            break
    assert "long" in admitted_at and admitted_at["long"] - 5 <= 4


def test_queue_full_is_all_or_nothing():
    s = make(max_queue=4)
    s.submit([g("a"), g("b"), g("c")])
    with pytest.raises(QueueFullError) as e:
        s.submit([g("d"), g("e")])
    assert (e.value.needed, e.value.waiting, e.value.max_queue) == (2, 3, 4)
    assert s.num_waiting == 3  # nothing of the rejected request was queued
    s.submit([g("d")])
    s.schedule(0)  # admission empties the queue...
    s.submit([g("e"), g("f"), g("g"), g("h")])  # ...so a full-size request fits again
    assert s.num_waiting == 4


def test_request_larger_than_the_queue_is_invalid():
    s = make(max_queue=2)
    with pytest.raises(ValidationError) as e:
        s.submit([g(i) for i in range(3)])
    assert e.value.field == "texts" and "max_queue=2" in str(e.value)


def test_bad_groups_are_rejected():
    s = make(max_batch_size=4)
    with pytest.raises(ValueError, match="needs 5 slots"):
        s.submit([g("a", slots=5)])
    s.submit([g("a")])
    with pytest.raises(ValueError, match="duplicate"):
        s.submit([g("a")])
    with pytest.raises(ValueError, match="duplicate"):
        s.submit([g("x"), g("x")])
    with pytest.raises(ValueError, match="max_batch_size"):
        Scheduler(0, 10, 10)
    with pytest.raises(ValueError, match="policy"):
        Scheduler(1, 10, 10, policy="lifo")


def test_cancel_waiting_frees_queue_room_at_once_and_is_reported():
    s = make(max_batch_size=1, max_queue=2)
    s.submit([g("run")])
    s.schedule(0)
    s.submit([g("a", request="r1"), g("b", request="r2")])
    assert s.cancel("a")
    assert s.num_waiting == 1
    s.submit([g("c")])  # the room is free before the next step
    out = s.schedule(1)
    assert [(a.group_id, a.reason, a.was_running) for a in out.aborted] == [("a", AbortReason.CANCELLED, False)]
    assert out.aborted[0].request_id == "r1"
    assert s.schedule(2).aborted == []  # reported once
    assert not s.cancel("a")  # already gone


def test_cancel_running_frees_slots_for_the_same_step():
    s = make(max_batch_size=2)
    s.submit([g("a", slots=2)])
    s.schedule(0)
    s.submit([g("b", slots=2)])
    assert s.cancel("a")
    assert not s.cancel("a")  # once
    assert s.num_running == 1  # still held until the next step
    out = s.schedule(1)
    assert [(a.group_id, a.reason, a.was_running) for a in out.aborted] == [("a", AbortReason.CANCELLED, True)]
    assert out.admitted_ids == ["b"]
    assert (out.num_running, out.slots_in_use) == (1, 2)
    s.update(["a"])  # a late "finished" for an aborted group is ignored
    assert s.slots_in_use == 2


def test_cancel_request_cancels_all_its_groups():
    s = make(max_batch_size=1)
    s.submit([g("r1.0", request="r1"), g("r1.1", request="r1"), g("r2.0", request="r2")])
    s.schedule(0)  # r1.0 runs, the others wait
    assert s.cancel_request("r1") == 2
    out = s.schedule(1)
    assert sorted((a.group_id, a.was_running) for a in out.aborted) == [("r1.0", True), ("r1.1", False)]
    assert out.admitted_ids == ["r2.0"]
    assert s.cancel_request("nope") == 0


def test_deadlines_expire_in_the_queue_and_in_the_batch():
    s = make(max_batch_size=1)
    s.submit([g("running", deadline=10.0), g("waiting", deadline=5.0), g("patient", deadline=None)])
    assert s.schedule(0).admitted_ids == ["running"]
    out = s.schedule(4.9)
    assert out.aborted == [] and out.admitted_ids == []
    out = s.schedule(5.0)  # now >= deadline: expired
    assert [(a.group_id, a.reason, a.was_running) for a in out.aborted] == [("waiting", AbortReason.DEADLINE, False)]
    out = s.schedule(10.0)
    assert [(a.group_id, a.reason, a.was_running) for a in out.aborted] == [("running", AbortReason.DEADLINE, True)]
    assert out.admitted_ids == ["patient"]  # the freed slot is used in the same step
    assert s.schedule(1e9).aborted == []  # no deadline, never expires


def test_random_workload_every_group_leaves_exactly_once():
    rng = random.Random(0)
    for policy in ("fifo", "shortest_first"):
        s = make(max_batch_size=16, max_batch_tokens=200, max_queue=40, policy=policy)
        submitted, finished, aborted = set(), [], []
        running: dict[int, int] = {}
        next_id = 0
        for step in range(400):
            if step < 300:
                for _ in range(rng.randint(0, 3)):
                    n = rng.randint(1, 4)
                    groups = [g(next_id + k, slots=rng.choice([1, 1, 2, 4]), tokens=rng.randint(1, 300), t=step,
                                request=next_id, deadline=step + rng.randint(5, 100) if rng.random() < 0.3 else None)
                              for k in range(n)]
                    try:
                        s.submit(groups)
                        submitted.update(x.group_id for x in groups)
                    except QueueFullError:
                        pass
                    next_id += n
                if submitted and rng.random() < 0.05:
                    s.cancel(rng.choice(sorted(submitted)))
            out = s.schedule(step)
            aborted += [a.group_id for a in out.aborted]
            for a in out.aborted:
                running.pop(a.group_id, None)
            assert out.slots_in_use <= 16
            running.update({x.group_id: rng.randint(1, 8) for x in out.admitted})
            done = [k for k, left in running.items() if left == 1]
            running = {k: left - 1 for k, left in running.items() if left > 1}
            finished += done
            s.update(done)
        assert not s.has_work(), policy
        assert sorted(finished + aborted) == sorted(submitted), policy  # each exactly once
        assert s.slots_in_use == 0


def test_wait_for_work():
    s = make()
    t0 = time.monotonic()
    assert s.wait_for_work(timeout=0.05) is False
    assert time.monotonic() - t0 >= 0.04
    threading.Timer(0.05, lambda: s.submit([g("a")])).start()
    assert s.wait_for_work(timeout=5) is True
    assert s.num_waiting == 1
