"""Audio chat LMs: an audio encoder feeding a causal LM through a chat template.

GLM-ASR (transformers' native ``glmasr``) and Ark-ASR-style checkpoints, including
``trust_remote_code`` ones whose processor takes ``text=`` and ``audio=`` and returns the audio
tensors. The prompt is one user turn (the audio, then an instruction) followed by the template's
generation prompt; the response is the transcript and the stop token. Languages do not enter the
prompt.
"""

from __future__ import annotations

import numpy as np

from stages.common.errors import UserError
from stages.models.base import AsrAdapter

# Used only when neither the caller nor the processor names an instruction.
FALLBACK_INSTRUCTION = "Please transcribe this audio into text"


class AudioChatLmAdapter(AsrAdapter):
    family = "audio_chat_lm"

    def __init__(self, model, processor, *, instruction: str | None = None, **options) -> None:
        self.instruction = (instruction
                            or getattr(processor, "default_transcription_prompt", None)
                            or FALLBACK_INSTRUCTION)
        if getattr(processor, "chat_template", None) is None:
            raise UserError(f"{getattr(model.config, '_name_or_path', 'model')}: the processor "
                            "has no chat template; an audio chat model needs one to build prompts")
        super().__init__(model, processor, **options)

    def _render_prompt(self, audio: np.ndarray, language: str | None) -> str:
        chat = [{"role": "user", "content": [{"type": "audio", "audio": audio},
                                             {"type": "text", "text": self.instruction}]}]
        text = self.processor.apply_chat_template(chat, add_generation_prompt=True,
                                                  tokenize=False)
        return text[0] if isinstance(text, list) else text
