"""Test fixtures, made with the Python reference (diffusers, transformers) in the project's venv.

    python tests/reference/make_fixtures.py target/fixtures

Writes:
  clip-vocab/            the real 49,408-token CLIP vocabulary (vocab.json + merges.txt), built
                         from the BPE merges that open-clip-torch ships
  tiny-sdxl-saved/       a tiny random SDXL pipeline exactly as `save_pretrained` writes it
                         (transformers 5 spellings: no `text_model.` prefix, tokenizer.json)
  tiny-sdxl/             the same weights laid out like a real download of SDXL base 1.0:
                         `text_model.` prefix and `position_ids` in text_encoder, tokenizers as
                         vocab.json + merges.txt + special_tokens_map.json + tokenizer_config.json
  ref/*.safetensors      reference inputs and outputs, one file per `ref_*.py` module here

Every `ref_*.py` module beside this file defines `make(fixtures: pathlib.Path)`; they all run
after the pipelines exist.
"""

import gzip
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TINY = ROOT / "configs" / "tiny"
SEED = 0


def bytes_to_unicode():
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable character."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_clip_vocab(out: Path):
    """The CLIP vocabulary as OpenAI's tokenizer builds it from the BPE merges file."""
    spec = importlib.util.find_spec("open_clip")
    bpe = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def added_token(content):
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


def write_download_tokenizer(vocab_dir: Path, out: Path, pad: str):
    """A tokenizer folder as the SDXL base 1.0 download ships it (written by transformers 4)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(vocab_dir / "vocab.json", out / "vocab.json")
    shutil.copy(vocab_dir / "merges.txt", out / "merges.txt")
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True,
                              "rstrip": False, "single_word": False},
                "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True,
                              "rstrip": False, "single_word": False},
                "pad_token": pad,
                "unk_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True,
                              "rstrip": False, "single_word": False},
            },
            indent=2,
        )
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_prefix_space": False,
                "bos_token": added_token("<|startoftext|>"),
                "clean_up_tokenization_spaces": True,
                "do_lower_case": True,
                "eos_token": added_token("<|endoftext|>"),
                "errors": "replace",
                "model_max_length": 77,
                "pad_token": pad if pad == "!" else added_token(pad),
                "tokenizer_class": "CLIPTokenizer",
                "unk_token": added_token("<|endoftext|>"),
            },
            indent=2,
        )
    )


def make_tiny_pipeline(fx: Path):
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from safetensors.torch import load_file, save_file
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                              CLIPTokenizer)

    vocab = fx / "clip-vocab"
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel.from_config(json.loads((TINY / "unet/config.json").read_text()))
    vae = AutoencoderKL.from_config(json.loads((TINY / "vae/config.json").read_text()))
    te = CLIPTextModel(CLIPTextConfig.from_json_file(TINY / "text_encoder/config.json"))
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig.from_json_file(TINY / "text_encoder_2/config.json"))
    sched = EulerDiscreteScheduler.from_config(
        json.loads((TINY / "scheduler/scheduler_config.json").read_text()))
    tok = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"),
                        pad_token="<|endoftext|>", model_max_length=77)
    tok2 = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"), pad_token="!",
                         model_max_length=77)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2,
                                     tokenizer=tok, tokenizer_2=tok2, unet=unet, scheduler=sched)
    saved = fx / "tiny-sdxl-saved"
    shutil.rmtree(saved, ignore_errors=True)
    pipe.save_pretrained(saved)

    # The download layout: same weights, transformers-4 names, classic tokenizer files.
    real = fx / "tiny-sdxl"
    shutil.rmtree(real, ignore_errors=True)
    shutil.copytree(saved, real, ignore=shutil.ignore_patterns("tokenizer", "tokenizer_2"))
    write_download_tokenizer(vocab, real / "tokenizer", "<|endoftext|>")
    write_download_tokenizer(vocab, real / "tokenizer_2", "!")
    for name in ["text_encoder", "text_encoder_2"]:
        path = real / name / "model.safetensors"
        sd = load_file(path)
        sd = {(k if k.startswith("text_model.") or k.startswith("text_projection")
               else "text_model." + k): v for k, v in sd.items()}
        n = json.loads((real / name / "config.json").read_text())["max_position_embeddings"]
        sd["text_model.embeddings.position_ids"] = torch.arange(n).unsqueeze(0)
        save_file(sd, path, metadata={"format": "pt"})
    return real


def run_reference_modules(fx: Path):
    (fx / "ref").mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    for path in sorted(HERE.glob("ref_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        print(f"reference: {path.name}", flush=True)
        torch.manual_seed(SEED)
        mod.make(fx)


def main():
    fx = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "target" / "fixtures").resolve()
    fx.mkdir(parents=True, exist_ok=True)
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    # The tests that compare training steps run on as many threads (tests/common: reference_threads).
    (fx / "reference-threads.json").write_text(json.dumps({"threads": threads}))
    make_clip_vocab(fx / "clip-vocab")
    make_tiny_pipeline(fx)
    run_reference_modules(fx)


if __name__ == "__main__":
    main()
