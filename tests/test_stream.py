import pytest

from mixer_scaling.stream import StreamSampler, total_steps


def test_every_epoch_is_a_permutation_and_batches_straddle_epochs():
    s = StreamSampler(10, 4, total_steps(30, 4), seed=0)
    batches = list(s)
    flat = [i for b in batches for i in b]
    assert len(batches) == 8 and all(len(b) == 4 for b in batches)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # reshuffled every epoch


def test_resume_position_gives_the_same_batches():
    full = list(StreamSampler(37, 8, 20, seed=3))
    resumed = list(StreamSampler(37, 8, 20, seed=3, start_step=13))
    assert resumed == full[13:]
    assert list(StreamSampler(37, 8, 20, seed=4)) != full


def test_ranks_split_the_global_batch():
    one = list(StreamSampler(50, 8, 5, seed=1))
    r0 = list(StreamSampler(50, 8, 5, seed=1, rank=0, world_size=2))
    r1 = list(StreamSampler(50, 8, 5, seed=1, rank=1, world_size=2))
    for g, a, b in zip(one, r0, r1):
        assert sorted(a + b) == sorted(g) and len(a) == len(b) == 4
    with pytest.raises(ValueError, match="train.batch_size=8"):
        StreamSampler(50, 8, 5, seed=1, world_size=3)
