"""Facts the README states that the code decides: checked here so the two cannot drift apart."""
from pathlib import Path

from model.osnet import ARCHITECTURES
from transforms.reasons import REASONS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def reasons_table() -> str:
    """The README's table of reason codes, generated from :mod:`transforms.reasons`."""
    lines = ["| reason | meaning |", "|---|---|"]
    lines += [f"| `{code}` | {meaning} |" for code, meaning in REASONS.items()]
    return "\n".join(lines) + "\n"


def _table_at(header: str) -> str:
    start = README.index(header)
    end = README.find("\n\n", start)
    return README[start:end + 1]


def test_readme_reason_table_is_exactly_the_codes_and_their_meanings():
    assert README.count("| reason | meaning |") == 1
    assert _table_at("| reason | meaning |") == reasons_table()


def test_readme_arch_option_lists_exactly_the_architectures():
    row = next(line for line in README.splitlines() if line.startswith("| `--arch` |"))
    listed = row.split("|")[3].replace("`", "").split(",")
    assert [name.strip() for name in listed] == list(ARCHITECTURES)
