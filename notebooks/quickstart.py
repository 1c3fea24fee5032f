# %% [markdown]
# # gsjax quickstart
# A tiny Qwen3 in Flax NNX: build it, export it as a Hugging Face checkpoint, load it back onto a
# mesh, and sample a multi-turn conversation with the slot KV-cache sampler. Runs on a laptop CPU
# in seconds; CI executes this file (`tests/test_entrypoints.py`). Open it in Jupyter with jupytext,
# or run it as a script.

# %%
import tempfile

from flax import nnx

from gsjax.models import hf_io
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.parallel import make_mesh
from gsjax.sampling import Sampler, SamplingParams
from gsjax.tokenizer import Tokenizer

tok = Tokenizer.train_bpe(["<think>search first</think>\n<answer>{\"gen_prompt\": \"a red kite\"}</answer>"] * 8, vocab_size=300)
model = Qwen3(tiny_config(vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
print(f"{model.cfg.num_params():,} parameters")

# %% Export to a Hugging Face folder and load it back, placed on a (data, fsdp, tp) mesh.
folder = tempfile.mkdtemp()
hf_io.save_model(model, folder)
mesh = make_mesh({"data": -1})
model = hf_io.load_model(folder, mesh)

# %% Sample one turn in two slots, then append a tool observation to slot 0 and continue it.
sampler = Sampler(model, num_slots=2, cache_len=256, params=SamplingParams(temperature=0.7),
                  stop_token_ids=[tok.eos_id], stop_strings=["</answer>"], decode=tok.decode, mesh=mesh)
prompt = tok.render_chat([{"role": "user", "content": "Draw a kite."}], add_generation_prompt=True).ids
turns = sampler.generate([prompt, prompt], max_new_tokens=24)
for t in turns:
    print(t.slot, t.finish.value, repr(tok.decode(t.tokens)))

sampler.append(0, tok.encode("<|im_end|>\n<|im_start|>user\n<tool_response>\nno results\n</tool_response><|im_end|>\n<|im_start|>assistant\n"), max_new_tokens=24)
while sampler.busy:
    for t in sampler.step():
        print("turn 2:", t.finish.value, repr(tok.decode(t.tokens)))
print("compilations:", dict(sampler.compile_counts))
