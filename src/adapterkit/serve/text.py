"""Token ids to text, one step at a time, with stop strings.

The text a client has been sent must never change, so a step emits only text
that is final: not the tail of an unfinished multi-byte character (decoded as
U+FFFD) and not a tail that could still grow into a stop string.
"""

from __future__ import annotations


class TextAssembler:
    def __init__(self, tokenizer, stop: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far (cut at a stop string once one is found)
        self.sent = 0  # characters of `text` already emitted
        self.stopped = False  # a stop string was found: the sequence should end

    def add(self, token: int) -> str:
        """Append one token; return the text that became final."""
        if self.stopped:
            return ""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = self._first_stop()
        if cut is not None:
            self.text, self.stopped = self.text[:cut], True
            return self._emit(len(self.text))
        return self._emit(self._safe_end())

    def flush(self) -> str:
        """The sequence ended: everything not sent yet is final."""
        text = self.text.rstrip("\ufffd") if not self.stopped else self.text
        return self._emit(len(text))

    def _emit(self, end: int) -> str:
        if end <= self.sent:
            return ""
        delta = self.text[self.sent:end]
        self.sent = end
        return delta

    def _first_stop(self) -> int | None:
        # Only the unsent tail (plus a stop's length of overlap) can hold a new match.
        longest = max((len(s) for s in self.stop), default=0)
        start = max(0, self.sent - longest)
        found = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _safe_end(self) -> int:
        text = self.text
        end = len(text.rstrip("\ufffd"))
        hold = 0  # the longest tail that is the start of a stop string: held back
        for stop in self.stop:
            for k in range(min(len(stop) - 1, end), hold, -1):
                if text[end - k:end] == stop[:k]:
                    hold = k
                    break
        return max(end - hold, self.sent)
