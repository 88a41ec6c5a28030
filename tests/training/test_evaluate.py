
from adapterkit.training.data import ChatExample
from adapterkit.training.evaluate import exact_match, generate_responses


def test_batched_left_padded_generation_matches_one_by_one(tiny_llama, smol_tokenizer):
    chats = [[{"role": "user", "content": text}] for text in ("hi", "a much longer question here", "ok")]
    batched = generate_responses(tiny_llama, smol_tokenizer, chats, max_new_tokens=5, batch_size=3)
    alone = [generate_responses(tiny_llama, smol_tokenizer, [chat], max_new_tokens=5)[0] for chat in chats]
    assert batched == alone


def test_exact_match_compares_stripped_replies(tiny_llama, smol_tokenizer):
    prompts = ["cat dog", "sun tree", "fish bird", "car rain"]
    replies = generate_responses(tiny_llama, smol_tokenizer, [[{"role": "user", "content": p}] for p in prompts], 6)
    # Two expected answers equal the model's reply (with stray spaces), two do not.
    expected = [f"  {replies[0]} ", replies[1], replies[2] + "!", "definitely not this"]
    examples = [ChatExample.from_prompt(p, e) for p, e in zip(prompts, expected)]
    tiny_llama.train()
    result = exact_match(tiny_llama, smol_tokenizer, examples, max_new_tokens=6, batch_size=3)
    assert (result.correct, result.total, result.exact_match) == (2, 4, 0.5)
    assert result.predictions == replies
    assert tiny_llama.training  # mode restored
