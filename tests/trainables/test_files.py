"""Files written whole or not at all: a crash mid-write leaves what was there before."""

import pytest

from trainables import files


class Crash(Exception):
    """What a kill mid-write looks like to the writer."""


def test_a_write_cut_short_leaves_the_old_file_and_no_leftovers(tmp_path):
    path = tmp_path / "winners.json"
    files.write_atomically(path, '{"old": true}')
    with pytest.raises(Crash), files.replaced_atomically(path) as written:
        written.write_text('{"new": tr')  # half written when the crash comes
        raise Crash
    assert path.read_text() == '{"old": true}' and sorted(tmp_path.iterdir()) == [path]
    files.write_atomically(path, '{"new": true}')
    assert path.read_text() == '{"new": true}' and sorted(tmp_path.iterdir()) == [path]


def test_a_directory_is_filled_aside_and_renamed_whole(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(Crash), files.directory_replaced_atomically(out) as filling:
        (filling / "model.safetensors").write_text("part")
        raise Crash
    assert list(tmp_path.iterdir()) == []  # neither the export nor its temporary directory
    out.mkdir()  # an empty directory given as OUT is taken
    with files.directory_replaced_atomically(out) as filling:
        (filling / "adapter_config.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["adapter_config.json"] and list(tmp_path.iterdir()) == [out]
