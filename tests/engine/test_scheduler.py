"""The scheduler, driven with a fake clock and fake finishing (no model, no torch)."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

import pytest

from mtserve.engine.errors import DeadlineUnreachableError, QueueFullError
from mtserve.engine.events import FinishReason
from mtserve.engine.scheduler import Request, Scheduler, Text, TextState


def t(text_id, rows=1, tokens=10, max_tokens=50) -> Text:
    return Text(text_id, rows=rows, source_tokens=tokens, max_tokens=max_tokens)


def req(request_id, *texts: Text, at=0.0, deadline=None, priority=0) -> Request:
    return Request(request_id, list(texts) or [t(request_id)], arrival_time=at, deadline=deadline, priority=priority)


def make(max_rows=8, max_batch_tokens=1000, max_queue=100, **kwargs) -> Scheduler:
    return Scheduler(max_rows, max_batch_tokens, max_queue, **kwargs)


def ids(texts) -> list:
    return [x.text_id for x in texts]


def aborts(out) -> list:
    return [(a.text.text_id, a.reason, a.was_running) for a in out.aborted]


def finish(s: Scheduler, *texts: Text) -> None:
    for text in texts:
        s.release(text, FinishReason.FINISHED)


def test_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import mtserve.engine.scheduler"  # torch import would fail
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_admission_in_arrival_order_within_the_rows():
    s = make(max_rows=10)
    a, b, c = t("a", rows=4), t("b", rows=4), t("c", rows=4)
    s.submit(req("r1", a, b))
    s.submit(req("r2", c))
    out = s.schedule(1.0)
    assert ids(out.admitted) == ["a", "c"]  # one text a turn: r2 goes before r1's second text
    assert all(x.admitted_time == 1.0 and x.state is TextState.RUNNING for x in out.admitted)
    assert (s.num_running, s.num_waiting, s.rows_in_use, s.free_rows) == (2, 1, 8, 2)
    assert ids(s.schedule(2.0).admitted) == []  # nothing finished: no room
    finish(s, a)
    assert (s.rows_in_use, a.state, a.finish_reason) == (4, TextState.DONE, FinishReason.FINISHED)
    assert ids(s.schedule(3.0).admitted) == ["b"]
    with pytest.raises(ValueError, match="not running"):
        finish(s, a)


def test_continuous_batching_short_joins_while_long_runs():
    s = make(max_rows=4)
    s.submit(req("long"))
    assert ids(s.schedule(0).admitted) == ["long"]
    for step in range(1, 4):  # the long one keeps decoding...
        assert s.schedule(step).admitted == []
    s.submit(req("short"))
    assert ids(s.schedule(4).admitted) == ["short"]  # ...and the short one joins at the next step


def test_a_small_call_is_not_stuck_behind_a_large_one():
    """The issue's head-of-line case: one sentence behind a 16-text beam-8 call starts at the next free rows."""
    s = make(max_rows=64)
    big = [t(f"big{i}", rows=8) for i in range(16)]
    s.submit(req("big", *big, at=0.0))
    assert ids(s.schedule(0).admitted) == [f"big{i}" for i in range(8)]  # 64 rows full
    small = t("small", rows=4)
    s.submit(req("small", small, at=1.0))
    assert s.schedule(1).admitted == []
    finish(s, big[0])  # 8 rows free: the small call holds none, so it goes first
    assert ids(s.schedule(2).admitted) == ["small"]
    finish(s, big[1])
    assert ids(s.schedule(3).admitted) == ["big8"]  # 4 + 8 free: big8 fits; big9 needs 8 more


def test_what_does_not_fit_is_passed_over():
    s = make(max_rows=4)
    s.submit(req("a", t("a", rows=2)))
    s.submit(req("b", t("b", rows=4)))
    s.submit(req("c", t("c", rows=1)))
    assert ids(s.schedule(0).admitted) == ["a", "c"]


def test_token_budget_per_step():
    s = make(max_batch_tokens=100)
    s.submit(req("r", t("a", tokens=60), t("b", tokens=30), t("c", tokens=20), t("d", tokens=5)))
    assert ids(s.schedule(0).admitted) == ["a", "b"]
    assert ids(s.schedule(1).admitted) == ["c", "d"]  # the budget is per step


def test_text_larger_than_the_budget_runs_first_in_its_step():
    s = make(max_batch_tokens=100)
    s.submit(req("r", t("small", tokens=10), t("huge", tokens=500), t("after", tokens=10)))
    assert ids(s.schedule(0).admitted) == ["small"]
    assert ids(s.schedule(1).admitted) == ["huge"]  # first of its step: admitted over the budget
    assert ids(s.schedule(2).admitted) == ["after"]


def test_longest_first_within_a_request():
    s = make(max_rows=2, order="longest_first")
    s.submit(req("r", t("short", tokens=3), t("long", tokens=30), t("mid", tokens=10)))
    assert ids(s.schedule(0).admitted) == ["long", "mid"]
    with pytest.raises(ValueError, match="order"):
        make(order="lifo")


def test_ageing_stops_a_wide_text_from_starving():
    """A beam text behind a stream of one-row texts: without ageing the free rows never reach 4."""
    for aging in (0.5, 2.0):
        s = make(max_rows=8, max_batch_tokens=64, max_queue=1000, aging_seconds=aging)
        running: dict[Text, int] = {}  # text -> steps left
        admitted_at = None
        counter = 0
        for step in range(200):
            now = step * 0.1
            for _ in range(2):  # two short arrivals per step, forever
                s.submit(req(f"s{counter}", t(f"s{counter}", tokens=8), at=now))
                counter += 1
            if step == 5:
                s.submit(req("wide", t("wide", rows=4, tokens=8), at=now))
            out = s.schedule(now)
            for x in out.admitted:
                running[x] = 4
                if x.text_id == "wide":
                    admitted_at = now
            for x in [x for x, left in running.items() if left == 1]:
                finish(s, x)
                del running[x]
            running = {x: left - 1 for x, left in running.items()}
            if admitted_at is not None:
                break
        assert admitted_at is not None, aging
        # Passed over from its first step; it waits aging_seconds, then at most a few steps for 4 free rows.
        assert 0.5 + aging <= admitted_at <= 0.5 + aging + 0.5, (aging, admitted_at)


def test_priority_first_and_the_lower_class_does_not_starve():
    s = make(max_rows=1, aging_seconds=1.0)
    s.submit(req("low", t("low"), at=0.0, priority=0))
    s.submit(req("high", t("high"), at=0.5, priority=1))
    assert ids(s.schedule(0.5).admitted) == ["high"]
    # A steady high-priority load: a new high request arrives every step.
    admitted_at = None
    running = s.running()
    for step in range(1, 40):
        now = 0.5 + step * 0.1
        s.submit(req(f"h{step}", t(f"h{step}"), at=now, priority=1))
        finish(s, *running)
        out = s.schedule(now)
        running = s.running()
        assert len(out.admitted) == 1
        if out.admitted[0].text_id == "low":
            admitted_at = now
            break
    # Passed over from 0.5 on; it reserves the row once it has waited aging_seconds (1.0) for it.
    assert admitted_at == pytest.approx(1.5)


def test_queue_full_is_all_or_nothing():
    s = make(max_queue=4)
    s.submit(req("r1", t("a"), t("b"), t("c")))
    with pytest.raises(QueueFullError) as e:
        s.submit(req("r2", t("d"), t("e")))
    assert (e.value.needed, e.value.waiting, e.value.max_queue) == (2, 3, 4)
    assert "max_queue=4" in str(e.value)
    assert s.num_waiting == 3  # nothing of the rejected request was queued
    s.submit(req("r3", t("d")))
    s.schedule(0)  # admission empties the queue...
    s.submit(req("r4", t("e"), t("f"), t("g"), t("h")))  # ...so a full-size request fits again
    assert s.num_waiting == 4


def test_bad_requests_are_rejected():
    s = make(max_rows=4, max_queue=2)
    with pytest.raises(ValueError, match="more than max_queue=2"):
        s.submit(req("r", t(1), t(2), t(3)))
    with pytest.raises(ValueError, match="needs 5 rows"):
        s.submit(req("r", t("a", rows=5)))
    s.submit(req("r", t("a")))
    with pytest.raises(ValueError, match="already in use"):
        s.submit(req("r", t("b")))
    with pytest.raises(ValueError, match="max_rows"):
        Scheduler(0, 10, 10)


def test_cancel_waiting_frees_queue_room_at_once_and_is_reported_once():
    s = make(max_rows=1, max_queue=2)
    s.submit(req("run"))
    s.schedule(0)
    s.submit(req("r1", t("a")))
    s.submit(req("r2", t("b")))
    assert s.cancel("r1") == 1
    assert s.num_waiting == 1
    s.submit(req("r3", t("c")))  # the room is free before the next step
    out = s.schedule(1)
    assert aborts(out) == [("a", FinishReason.CANCELLED, False)]
    assert s.schedule(2).aborted == []  # reported once
    assert s.cancel("r1") == 0  # already gone


def test_cancel_at_a_full_batch_frees_rows_for_the_same_steps_admission():
    """The engine-core issue's repro, at the scheduler: the rows a cancel frees are the rows admitted."""
    s = make(max_rows=2)
    s.submit(req("victim"))
    s.submit(req("innocent"))
    s.schedule(0)
    s.submit(req("waiting"))
    assert s.schedule(1).admitted == []  # the batch is full
    assert s.cancel("victim") == 1
    assert s.num_running == 2  # still held until the next step...
    out = s.schedule(2)
    assert aborts(out) == [("victim", FinishReason.CANCELLED, True)]
    assert ids(out.admitted) == ["waiting"]  # ...whose admission uses them
    assert (s.num_running, s.rows_in_use) == (2, 2)


def test_cancel_ends_all_of_a_requests_texts():
    s = make(max_rows=1)
    s.submit(req("r1", t("r1.0"), t("r1.1")))
    s.submit(req("r2", t("r2.0")))
    s.schedule(0)  # r1.0 runs, the others wait
    assert s.cancel("r1") == 2
    out = s.schedule(1)
    assert sorted((x[0], x[2]) for x in aborts(out)) == [("r1.0", True), ("r1.1", False)]
    assert ids(out.admitted) == ["r2.0"]
    assert s.cancel("nope") == 0
    assert s.num_requests == 1


def test_deadlines_expire_in_the_queue_and_in_the_batch():
    s = make(max_rows=1)
    s.submit(req("running", deadline=10.0))
    s.submit(req("waiting", deadline=5.0))
    s.submit(req("patient"))
    assert ids(s.schedule(0).admitted) == ["running"]
    out = s.schedule(4.9)
    assert out.aborted == [] and out.admitted == []
    out = s.schedule(5.0)  # now >= deadline: expired
    assert aborts(out) == [("waiting", FinishReason.DEADLINE, False)]
    out = s.schedule(10.0)
    assert aborts(out) == [("running", FinishReason.DEADLINE, True)]
    assert ids(out.admitted) == ["patient"]  # the freed row is used in the same step
    assert s.schedule(1e9).aborted == []  # no deadline, never expires


def test_a_text_that_cannot_finish_in_time_is_shed_at_admission():
    s = make(max_rows=4)
    assert s.expected_seconds(t("x")) is None  # nothing measured yet: nothing is shed
    s.observe_step(0.1)
    s.observe_output(source_tokens=10, output_tokens=12)
    late, fine, no_deadline = t("late", tokens=10), t("fine", tokens=10), t("any", tokens=10)
    assert s.expected_seconds(late) == pytest.approx(1.3)  # ceil(1.2 * 10) + 1 tokens at 0.1 s
    s.submit(req("late", late, at=0.0, deadline=1.0))
    s.submit(req("fine", fine, at=0.0, deadline=2.0))
    s.submit(req("any", no_deadline, at=0.0))
    out = s.schedule(0.0)
    assert aborts(out) == [("late", FinishReason.DEADLINE, False)]
    assert ids(out.admitted) == ["fine", "any"]
    capped = t("capped", tokens=1000, max_tokens=5)  # at most max_tokens whatever the ratio says
    assert s.expected_seconds(capped) == pytest.approx(0.5)


def test_a_request_that_cannot_finish_even_if_started_now_is_refused_on_submit():
    """It would hold queue room until its deadline for nothing: refused at once, nothing of it queued."""
    s = make(max_rows=4, max_queue=3)
    s.submit(req("unmeasured", at=0.0, deadline=0.001), now=0.0)  # no estimate yet: queued
    s.observe_step(0.1)
    s.observe_output(source_tokens=10, output_tokens=12)  # 1.3 s expected for 10 source tokens
    with pytest.raises(DeadlineUnreachableError, match="1300 ms") as refused:
        s.submit(req("hopeless", t("a", tokens=2), t("b", tokens=10), at=0.0, deadline=1.0), now=0.0)
    assert refused.value.seconds_left == pytest.approx(1.0)
    assert s.num_waiting == 1  # neither text of it was queued, and the queue still has room
    s.submit(req("just", at=0.0, deadline=1.3), now=0.0)
    assert s.num_waiting == 2


def test_submit_without_a_time_leaves_shedding_to_admission():
    s = make(max_rows=4)
    s.observe_step(0.1)
    s.observe_output(source_tokens=10, output_tokens=12)
    s.submit(req("late", at=0.0, deadline=1.0))  # queued: admission sheds it
    assert aborts(s.schedule(0.0)) == [("late", FinishReason.DEADLINE, False)]


def test_resize_and_abort_all():
    s = make(max_rows=8)
    sampled, other, waiting = t("sampled", rows=4), t("other", rows=4), t("waiting")
    s.submit(req("r1", sampled))
    s.submit(req("r2", other))
    s.schedule(0)
    s.submit(req("r3", waiting))
    s.resize(sampled, 2)  # two of its samples finished
    assert (s.rows_in_use, sampled.rows) == (6, 2)
    ended = s.abort_all(FinishReason.FAILED)
    assert sorted((a.text.text_id, a.was_running) for a in ended) == [("other", True), ("sampled", True),
                                                                      ("waiting", False)]
    assert (s.rows_in_use, s.num_running, s.num_waiting, s.num_requests) == (0, 0, 0, 0)
    assert all(x.finish_reason is FinishReason.FAILED for x in (sampled, other, waiting))


def test_random_workload_every_text_ends_exactly_once():
    rng = random.Random(0)
    for order in ("arrival", "longest_first"):
        s = make(max_rows=16, max_batch_tokens=200, max_queue=40, order=order, aging_seconds=5)
        submitted: list[Text] = []
        running: dict[Text, int] = {}
        ended: list[Text] = []
        for step in range(500):
            if step < 400:
                for _ in range(rng.randint(0, 3)):
                    texts = [t(f"{step}.{k}.{rng.random()}", rows=rng.choice([1, 1, 2, 4]), tokens=rng.randint(1, 300))
                             for k in range(rng.randint(1, 4))]
                    deadline = step + rng.randint(5, 100) if rng.random() < 0.3 else None
                    try:
                        s.submit(req(f"r{step}.{rng.random()}", *texts, at=step, deadline=deadline))
                        submitted += texts
                    except QueueFullError:
                        pass
                if submitted and rng.random() < 0.05:
                    s.cancel(rng.choice(submitted).request.request_id)
            out = s.schedule(step)
            for abort in out.aborted:
                running.pop(abort.text, None)
                ended.append(abort.text)
            assert s.rows_in_use == sum(x.rows for x in running) + sum(x.rows for x in out.admitted) <= 16
            running.update({x: rng.randint(1, 8) for x in out.admitted})
            for x in [x for x, left in running.items() if left == 1]:
                s.release(x, FinishReason.FINISHED)
                ended.append(x)
                del running[x]
            running = {x: left - 1 for x, left in running.items()}
        assert not s.has_work(), order
        assert sorted(map(id, ended)) == sorted(map(id, submitted)), order  # each exactly once
        assert all(x.state is TextState.DONE for x in submitted)
        assert (s.rows_in_use, s.num_requests) == (0, 0)


def test_wait_for_work():
    s = make()
    t0 = time.monotonic()
    assert s.wait_for_work(timeout=0.05) is False
    assert time.monotonic() - t0 >= 0.04
    threading.Timer(0.05, lambda: s.submit(req("a"))).start()
    assert s.wait_for_work(timeout=5) is True
    assert s.num_waiting == 1


def test_upcoming_guesses_the_admission_order_within_limits_and_changes_nothing():
    s = make(max_rows=1)
    s.submit(req("a", t("a0", tokens=5), t("a1", tokens=5), t("a2", tokens=5)))
    s.submit(req("b", t("b0", tokens=5), t("b1", tokens=5), priority=1))
    assert ids(s.upcoming(10, 1000)) == ["b0", "a0", "b1", "a1", "a2"]  # requests by turn, a text a round
    assert ids(s.upcoming(3, 1000)) == ["b0", "a0", "b1"]
    assert ids(s.upcoming(10, 12)) == ["b0", "a0"]  # the next would pass 12 source tokens
    assert s.num_waiting == 5 and ids(s.schedule(0.0).admitted) == ["b0"]
    assert ids(s.upcoming(10, 1000)) == ["b1", "a0", "a1", "a2"]  # b holds a row now: a goes first
