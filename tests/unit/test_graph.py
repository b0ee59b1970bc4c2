import numpy as np
import pytest

from module.graph import LAYOUTS, NTU25, adjacency, hop_distance, normalize_columns


def test_ntu25_is_a_tree_over_25_joints():
    assert NTU25.num_joints == 25 and len(NTU25.edges) == 24
    dist = hop_distance(25, NTU25.edges, max_hop=25)
    assert np.isfinite(dist).all()  # connected


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("strategy,k", [("uniform", 1), ("distance", 2), ("spatial", 3)])
def test_adjacency_partitions_the_normalised_neighbourhood(name, strategy, k):
    a = adjacency(name, strategy)
    v = LAYOUTS[name].num_joints
    assert a.shape == (k, v, v) and a.dtype == np.float32
    # every strategy splits the same column-normalised 1-hop neighbourhood into subsets
    dist = hop_distance(v, LAYOUTS[name].edges, 1)
    np.testing.assert_allclose(a.sum(0), normalize_columns((dist <= 1).astype(float)), atol=1e-6)
    np.testing.assert_allclose(a.sum(axis=(0, 1)), np.ones(v), atol=1e-6)  # columns sum to 1


def test_spatial_partition_on_a_three_joint_chain():
    from module.graph import Layout

    chain = Layout("chain", ("a", "b", "c"), ((0, 1), (1, 2)), center=0)
    a = adjacency(chain, "spatial")
    # column j of the normalised matrix is 1/deg(j): deg = 2, 3, 2
    root = np.diag([1 / 2, 1 / 3, 1 / 2])
    np.testing.assert_allclose(a[0], root, atol=1e-6)
    # entry [v, w]: joint v feeds joint w (the graph conv sums over v).
    # Distances to the centre (capped at max_hop=1): a 0, b 1, c inf.
    # Subset 1 takes a source further from the centre than its target: b→a, c→b.
    assert a[1][1, 0] == pytest.approx(1 / 2) and a[1][2, 1] == pytest.approx(1 / 3)
    # Subset 2 the opposite: a→b, b→c.
    assert a[2][0, 1] == pytest.approx(1 / 3) and a[2][1, 2] == pytest.approx(1 / 2)
    assert np.count_nonzero(a[1]) == 2 and np.count_nonzero(a[2]) == 2


def test_unknown_layout_and_strategy():
    with pytest.raises(KeyError, match="unknown graph layout"):
        adjacency("kinect99")
    with pytest.raises(ValueError, match="unknown graph strategy"):
        adjacency("ntu25", "random")


def test_openni15_and_a_layout_file(tmp_path):
    import json

    from module.graph import adjacency, get_layout

    o = get_layout("openni15")
    assert o.num_joints == 15 and o.joints[o.center] == "neck" and len(o.edges) == 14
    path = tmp_path / "stick.json"
    path.write_text(json.dumps({"joints": ["head", "neck", "hip", "hand_left", "hand_right"],
                                "bones": [["head", "neck"], ["neck", "hip"], [2, 4], ["neck", "hand_right"]],
                                "center": "neck", "origin": "hip"}))
    lay = get_layout(str(path))
    assert lay.edges == ((0, 1), (1, 2), (1, 3), (1, 4)) and lay.center == 1 and lay.origin == 2
    assert adjacency(lay).shape == (3, 5, 5)
    path.write_text(json.dumps({"joints": ["a", "b"], "bones": [["a", "c"]], "center": "a"}))
    with pytest.raises(ValueError, match=r"stick.json: bone joint 'c' is not one of its 2 joints"):
        get_layout(str(path))


def test_a_wrong_joint_order_is_named():
    import numpy as np

    from data.layout_check import layout_warnings
    from module.graph import get_layout

    rng = np.random.default_rng(0)
    lay = get_layout("openni15")
    body = np.array([[0, 1.7, 0], [0, 1.5, 0], [0, 1.1, 0], [-.2, 1.45, 0], [-.45, 1.2, 0], [-.6, .95, 0],
                     [.2, 1.45, 0], [.45, 1.2, 0], [.6, .95, 0], [-.1, .9, 0], [-.1, .5, 0], [-.1, .05, 0],
                     [.1, .9, 0], [.1, .5, 0], [.1, .05, 0]])
    x = (body[None, :, None, :] + rng.normal(scale=0.01, size=(4, 15, 10, 3))).transpose(0, 3, 2, 1)[..., None]
    assert layout_warnings(lay, x) == []
    perm = list(range(15))
    perm[4], perm[13] = perm[13], perm[4]  # elbow_left and knee_right swapped in the data
    found = layout_warnings(lay, x[:, :, :, perm])
    assert found and all("elbow_left" in w or "knee_left" in w for w in found)
