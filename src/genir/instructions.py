"""Retrieval instructions: which modality a query is and which one it wants back.

GENIUS and M-BEIR put an instruction in front of every query ("retrieve an image that
matches the caption"); the first code of a universal index's IDs is the target modality
the instruction names. This module holds the instruction vocabulary and parses a user's
instruction into (query modality, target modality), naming the valid ones when it fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from genir.data.corpus import MODALITIES


@dataclass(frozen=True)
class Instruction:
    text: str
    query_modality: str    # "image", "text" or "image_text"
    target_modality: str


INSTRUCTIONS: tuple[Instruction, ...] = (
    Instruction("retrieve an image that matches the caption", "text", "image"),
    Instruction("retrieve a similar image", "image", "image"),
    Instruction("retrieve the caption of this image", "image", "text"),
    Instruction("retrieve a text that answers the query", "text", "text"),
    Instruction("retrieve an image and its caption that match the text", "text", "image_text"),
    Instruction("retrieve an image that matches the image and its description",
                "image_text", "image"),
)
_BY_TEXT = {ins.text: ins for ins in INSTRUCTIONS}


def normalise(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".!:")


def parse_instruction(text: str) -> Instruction:
    """An instruction string (case, spacing and a final period ignored) -> Instruction."""
    found = _BY_TEXT.get(normalise(text))
    if found is None:
        valid = "; ".join(f'"{ins.text}"' for ins in INSTRUCTIONS)
        raise ValueError(f"unknown instruction {text!r}; valid instructions: {valid}")
    return found


def default_instruction(query_modality: str, target_modality: str) -> Instruction:
    """The instruction for a (query, target) modality pair; ValueError if there is none."""
    for ins in INSTRUCTIONS:
        if (ins.query_modality, ins.target_modality) == (query_modality, target_modality):
            return ins
    raise ValueError(f"no instruction retrieves {target_modality} items with a "
                     f"{query_modality} query (modalities: {', '.join(MODALITIES)})")


__all__ = ["INSTRUCTIONS", "Instruction", "default_instruction", "normalise", "parse_instruction"]
