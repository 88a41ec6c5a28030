import pytest

from adapterkit.training.data import ChatExample
from adapterkit.training.encoding import IGNORE_INDEX, chat_token_ids, encode_example, encode_prompt
from adapterkit.training.errors import ChatTemplateError


def labelled_text(tokenizer, encoded):
    return tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])


def test_only_the_response_and_end_of_turn_are_labelled(smol_tokenizer):
    example = ChatExample.from_prompt("cat dog sun", "sun dog cat", system="Word game.")
    encoded = encode_example(smol_tokenizer, example)
    prompt = encode_prompt(smol_tokenizer, example.prompt_messages)
    assert encoded.input_ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in encoded.labels[: len(prompt)])
    assert labelled_text(smol_tokenizer, encoded) == "sun dog cat<|im_end|>\n"
    assert smol_tokenizer.convert_tokens_to_ids("<|im_end|>") in encoded.labels
    labelled = [i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
    assert [encoded.input_ids[i] for i in labelled] == [encoded.labels[i] for i in labelled]
    assert encoded.response_length == len(labelled)


def test_default_system_prompt_is_never_labelled(smol_tokenizer):
    encoded = encode_example(smol_tokenizer, ChatExample.from_prompt("hi", "yo"))
    assert "SmolLM" in smol_tokenizer.decode(encoded.input_ids)
    assert labelled_text(smol_tokenizer, encoded) == "yo<|im_end|>\n"


def test_every_assistant_turn_is_labelled(smol_tokenizer):
    example = ChatExample(({"role": "user", "content": "one"}, {"role": "assistant", "content": "1"},
                           {"role": "user", "content": "two"}, {"role": "assistant", "content": "2"}))
    assert labelled_text(smol_tokenizer, encode_example(smol_tokenizer, example)) == "1<|im_end|>\n2<|im_end|>\n"


def test_batch_encoding_and_plain_lists_both_accepted(smol_tokenizer):
    chat = [{"role": "user", "content": "hi"}]
    expected = smol_tokenizer(smol_tokenizer.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"]
    assert chat_token_ids(smol_tokenizer, chat, add_generation_prompt=False) == expected

    class ListTokenizer:  # the transformers 4 return type
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return [5, 6, 7]

    assert chat_token_ids(ListTokenizer(), chat, add_generation_prompt=False) == [5, 6, 7]


def test_tokenizer_without_template_is_refused(smol_tokenizer):
    class NoTemplate:
        chat_template = None

    with pytest.raises(ChatTemplateError, match="chat_template"):
        encode_prompt(NoTemplate(), [{"role": "user", "content": "hi"}])
