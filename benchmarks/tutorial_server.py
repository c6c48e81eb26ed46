"""The tutorial's `api.py`, written faithfully as a benchmark baseline. Not part of loragate.

The Llama-3.1 tutorial serves the model with `python api.py`: `POST /` on port 6006 taking
{"prompt"} and answering {"response", "status", "time"} (its curl and `get_completion` examples).
Its `api.py` listing is empty in our copy of the tutorial; the design here is that of the
series' `api.py` files, with the generation code of the tutorial's own `LLM.py`: a FastAPI
`async def` endpoint that renders the chat template and calls transformers `model.generate`.
The blocking `generate` runs inside the `async def`, on the event loop: requests are served
strictly one at a time, each one a batch of one. Kept as is: model loading (bfloat16,
device_map="auto", use_fast=False, pad = eos), the system prompt, the generate call, the
decoding and the per-request log line.

What is added, and only so that the same workload drives all three servers:
- `POST /v1/chat/completions`, non-streamed (the tutorial never streams), built the same way;
  it honours `max_completion_tokens`/`max_tokens`, `ignore_eos` (as `min_new_tokens`, for fixed
  output lengths) and `temperature` (0 means greedy), and reports `usage`.
- `max_new_tokens` in `POST /`, for the same reason (the tutorial's is a fixed 512).
The tutorial's `torch_gc()` empties the CUDA cache; there is no CUDA here, so it is left out.
"""

from __future__ import annotations

import argparse
import datetime
import time
import uuid
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from transformers import AutoModelForCausalLM, AutoTokenizer

app = FastAPI()
model: Any = None
tokenizer: Any = None
model_name = "tutorial"


def generate(
    messages: list[dict[str, str]], max_new_tokens: int, ignore_eos: bool, temperature: float
) -> tuple[str, int, int]:
    """The tutorial's generation code; returns (response, prompt tokens, completion tokens)."""
    input_ids = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    model_inputs = tokenizer([input_ids], return_tensors="pt").to(model.device)
    generated_ids = model.generate(
        model_inputs.input_ids,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens if ignore_eos else None,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=None,
    )
    generated_ids = [
        output_ids[len(input_ids) :]
        for input_ids, output_ids in zip(model_inputs.input_ids, generated_ids, strict=True)
    ]
    response = tokenizer.batch_decode(generated_ids, skip_special_tokens=True)[0]
    return response, int(model_inputs.input_ids.shape[1]), len(generated_ids[0])


def _log(prompt: str, response: str) -> str:
    now = datetime.datetime.now()
    time_text = now.strftime("%Y-%m-%d %H:%M:%S")
    print("[" + time_text + "] " + '", prompt:"' + prompt + '", response:"' + repr(response) + '"')
    return time_text


@app.post("/")
async def create_item(request: Request) -> dict[str, Any]:
    json_post = await request.json()
    prompt = json_post.get("prompt")
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": prompt},
    ]
    response, _, _ = generate(messages, int(json_post.get("max_new_tokens", 512)), False, 0.0)
    time_text = _log(prompt, response)
    return {"response": response, "status": 200, "time": time_text}


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> dict[str, Any]:
    body = await request.json()
    messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
    max_new_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 512)
    response, prompt_tokens, completion_tokens = generate(
        messages, max_new_tokens, bool(body.get("ignore_eos")), float(body.get("temperature", 0))
    )
    _log(messages[-1]["content"], response)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": response},
                "finish_reason": "length" if completion_tokens >= max_new_tokens else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def main() -> None:
    global model, tokenizer
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a Hugging Face model directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6006)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model, use_fast=False)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, device_map="auto", torch_dtype=torch.bfloat16
    )
    tokenizer.pad_token = tokenizer.eos_token
    uvicorn.run(app, host=args.host, port=args.port, workers=1)


if __name__ == "__main__":
    main()
