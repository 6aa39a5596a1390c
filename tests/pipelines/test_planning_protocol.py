import numpy as np
import pytest

from pipelines.planning_protocol import TOLERANCE, Episode, Goal, Protocol, distance, make_goal, wilson_interval


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(40, 50)
    assert (round(low, 3), round(high, 3)) == (0.670, 0.888)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_angles_wrap_and_positions_do_not():
    assert distance("reacher", np.array([np.pi - 0.01, 0.0]), np.array([-np.pi + 0.01, 0.0])) == pytest.approx(0.02)
    assert distance("point_mass", np.array([0.1, -0.2]), np.array([0.1, 0.1])) == pytest.approx(0.3)


def test_goals_are_reproducible_and_away_from_the_start():
    p = Protocol(img_size=32)
    a, b = make_goal(p, 3), make_goal(p, 3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.qpos, b.qpos)
    assert a.start_distance > 0.05 and a.image.shape == (32, 32, 3)
    assert not np.array_equal(make_goal(p, 4).qpos, a.qpos)
    tuning = make_goal(Protocol(img_size=32, seed_base=2_000_000), 3)  # another goal set for tuning
    assert tuning.seed == 2_000_003 and not np.array_equal(tuning.qpos, a.qpos)


def test_point_mass_goals_lie_beyond_the_tolerance():
    p = Protocol(env="point_mass", img_size=32)
    distances = [make_goal(p, i).start_distance for i in range(5)]
    assert np.median(distances) > 2 * TOLERANCE["point_mass"]  # not reached by standing still


def test_episode_starts_where_the_goal_run_started_and_detects_success():
    p = Protocol(img_size=32)
    goal = make_goal(p, 0)
    here = Episode(p, goal).env.physics.data.qpos.copy()
    at_start = Goal(goal.seed, goal.image, here.copy(), 0.0)  # a goal the agent already stands on
    ep = Episode(p, at_start)
    ep.step(np.zeros(2))
    out = ep.outcome()
    assert out.success and out.steps_to_success == 1
    far = Episode(p, goal)
    far.step(np.zeros(2))
    assert not far.outcome().success and far.outcome().best_distance > 0.05
