"""stac_codec's C++ extensions load through one helper that names the fix when one is missing."""

import pytest

from stac_codec.extensions import load_extension


def test_a_built_extension_loads():
    assert hasattr(load_extension("_mask_coder"), "encode")
    assert hasattr(load_extension("_logit_labels"), "__name__")


def test_a_missing_extension_says_how_to_build_it():
    with pytest.raises(
        ImportError, match=r"stac_codec\._not_there is not built: run scripts/setup\.sh"
    ):
        load_extension("_not_there")
