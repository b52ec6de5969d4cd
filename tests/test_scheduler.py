from facefleet.cluster.scheduler import Scheduler


def test_at_most_two_chunks_in_flight_per_worker():
    s = Scheduler([0, 1])
    picks = []
    while (w := s.pick(100)) is not None:
        s.sent(w, ("job", len(picks)), 100)
        picks.append(w)
    assert sorted(picks) == [0, 0, 1, 1]
    assert not s.has_capacity


def test_faster_worker_gets_proportionally_more_frames():
    """Simulated: worker 1 runs twice as fast as worker 0; frames follow expected finish time."""
    s = Scheduler([0, 1])
    speed = {0: 10.0, 1: 20.0}
    clock = {0: 0.0, 1: 0.0}
    frames = {0: 0, 1: 0}
    busy_until = {0: [], 1: []}
    for i in range(60):
        w = s.pick(50)
        if w is None:  # wait for the earliest chunk to finish
            w_done = min((t[0], w) for w, q in busy_until.items() for t in q[:1])[1]
            t_end, key, n = busy_until[w_done].pop(0)
            s.finished(w_done, key, n, n / speed[w_done])
            w = s.pick(50)
        key = ("job", i)
        start = max([clock[w]] + [t[0] for t in busy_until[w]])
        busy_until[w].append((start + 50 / speed[w], key, 50))
        clock[w] = start
        s.sent(w, key, 50)
        frames[w] += 50
    assert 1.6 <= frames[1] / frames[0] <= 2.5


def test_dead_worker_is_skipped():
    s = Scheduler([0, 1])
    s.remove(0)
    assert s.pick(10) == 1
    assert s.alive == [1]
