"""The one did-you-mean hint every "unknown ..." error ends with."""

from frameavg.errors import did_you_mean


def test_did_you_mean_names_the_closest_option_with_its_prefix():
    assert did_you_mean("cosin", ["cosine", "plateau", "constant"]) == "; did you mean 'cosine'?"
    assert did_you_mean("hiden_channels", ["hidden_channels", "cutoff"], "model.") == \
        "; did you mean 'model.hidden_channels'?"
    assert did_you_mean(3, [1, 2, 33]) == "; did you mean '33'?"  # non-strings compared as text


def test_did_you_mean_is_empty_when_nothing_is_close():
    assert did_you_mean("xyz", ["faenet", "painn"]) == ""
    assert did_you_mean("faenet", []) == ""
