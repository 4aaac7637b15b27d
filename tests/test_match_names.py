"""match_names: the one include/exclude matcher (fnmatch globs) of mt.compress and the mpo command."""

import fnmatch

import pytest

from mpo._validation import match_names

NAMES = ["embed", "encoder.layer.0.query", "encoder.layer.0.key", "encoder.layer.1.query", "head"]


def test_globs_cross_dots_and_keep_order():
    assert match_names(NAMES, "encoder.*.query", None) == ["encoder.layer.0.query", "encoder.layer.1.query"]
    assert match_names(NAMES, None, ["*.key", "head"]) == ["embed", "encoder.layer.0.query", "encoder.layer.1.query"]
    assert match_names(NAMES, ["head", "embed"], None) == ["embed", "head"]
    assert match_names(NAMES, None, None) == NAMES
    # The oracle: fnmatch itself, name by name.
    got = match_names(NAMES, "encoder.layer.[01].*", "*.key")
    assert got == [n for n in NAMES if fnmatch.fnmatchcase(n, "encoder.layer.[01].*") and not n.endswith(".key")]


def test_case_sensitive_and_whole_name():
    with pytest.raises(ValueError, match="include pattern 'HEAD' matches none of: embed, encoder"):
        match_names(NAMES, "HEAD", None)
    with pytest.raises(ValueError, match="exclude pattern 'query' matches none of"):
        match_names(NAMES, None, "query")  # a glob matches the whole name, not a part


@pytest.mark.parametrize("bad", [3, [1, "x"], b"head"])
def test_patterns_must_be_strings(bad):
    with pytest.raises(TypeError, match="include must be a string or a list of strings"):
        match_names(NAMES, bad, None)


def test_no_names():
    with pytest.raises(ValueError, match=r"matches none of: \(no names\)"):
        match_names([], "x", None)
    assert match_names([], None, None) == []
