"""The model card names the files that ship: each weights file's sha256 as its sidecar has it."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[2] / "services" / "recon" / "weights"


def test_model_card_states_the_sha256_of_every_shipped_weights_file() -> None:
    card = (WEIGHTS / "MODEL_CARD.md").read_text()
    sidecars = sorted(WEIGHTS.glob("*.pt.sha256"))
    assert {s.name for s in sidecars} == {"prior.pt.sha256", "classifier.pt.sha256"}
    for sidecar in sidecars:
        digest = sidecar.read_text().split()[0]
        assert f"| sha256 | `{digest}`" in card, f"MODEL_CARD.md does not state {sidecar.name}"
