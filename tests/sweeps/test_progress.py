from sweeps import progress


def test_a_line_redrawn_in_place_is_cut_to_the_terminal_width(monkeypatch):
    # A wider line wraps, and "\r" would redraw only its last row, leaving a row behind each time.
    monkeypatch.setenv("COLUMNS", "40")
    assert progress.fitted("x" * 100) == "x" * 39
    assert progress.fitted("[search] 1/6") == "[search] 1/6"
