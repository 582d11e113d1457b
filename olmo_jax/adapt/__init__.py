"""Fine-tuning (SFT and DPO): `chat` (templates, labels), `data` (conversations and preference pairs as rows),
`losses` (SFT cross-entropy, the DPO family), `reference` (DPO's cached reference log-probs), `demo` (the
offline instruction set)."""
