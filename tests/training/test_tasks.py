import pytest

from adapterkit.training.tasks import TASK_NAMES, make_task


@pytest.mark.parametrize("name", TASK_NAMES)
def test_tasks_are_seeded_and_disjoint(name):
    task = make_task(name)
    assert task == make_task(name)
    assert make_task(name, seed=1).eval != task.eval
    train_prompts = {e.messages[1]["content"] for e in task.train}
    eval_prompts = {e.messages[1]["content"] for e in task.eval}
    assert not train_prompts & eval_prompts
    assert len(task.train) == task.train_config.steps * task.train_config.batch_size
    quick = make_task(name, quick=True)
    assert quick.train_config.steps < task.train_config.steps and len(quick.eval) < len(task.eval)


def test_tasks_answer_the_same_prompt_differently():
    reverse, shout = make_task("reverse"), make_task("shout")
    example = reverse.eval[0]
    words = example.messages[1]["content"].split()
    assert example.response == " ".join(reversed(words))
    assert shout.eval[0].response == shout.eval[0].messages[1]["content"].upper()


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="reverse"):
        make_task("sort")
