from captioner.text import ensure_prefix, remove_traits, render_prefix


def test_prefix_template_substitutes_token_and_class_word():
    assert render_prefix("photo of {token}, ", "anantn", "man") == "photo of anantn, "
    assert render_prefix("{token} {classWord}, ", "ohwx", "dog") == "ohwx dog, "


def test_prefix_is_added_once():
    prefix = "photo of anantn, "
    assert ensure_prefix("a man in an orange shirt", prefix) == "photo of anantn, a man in an orange shirt"
    assert ensure_prefix("photo of anantn, a man in an orange shirt", prefix) == "photo of anantn, a man in an orange shirt"
    assert ensure_prefix("Photo of anantn a man", prefix) == "Photo of anantn a man"


def test_common_traits_are_removed_with_their_joining_words():
    caption = "a man with black hair and sunglasses sitting on a rock, Black Hair, in the desert"
    assert remove_traits(caption, ["black hair"]) == "a man and sunglasses sitting on a rock, in the desert"


def test_trait_removal_matches_whole_words_only():
    assert remove_traits("a beard and a bearded dragon", ["beard"]) == "a and a bearded dragon"
    assert remove_traits("a man with a beard", ["a beard"]) == "a man"


def test_trait_removal_tidies_commas():
    assert remove_traits("black hair, a man smiling, with black hair", ["black hair"]) == "a man smiling"


def test_several_traits_and_no_traits():
    assert remove_traits("a man with black hair and brown eyes in a kitchen", ["black hair", "brown eyes"]) == "a man in a kitchen"
    assert remove_traits("a man in a kitchen", []) == "a man in a kitchen"
