"""``fastoptim bench``: fastoptim's default step against torch.optim's variants, at the bandwidth limit.

* :mod:`.bytemodel` - the minimum bytes each algorithm's step moves (the GB/s yardstick);
* :mod:`.paramsets` - the parameter sets (many tensors, one big tensor, many tiny tensors);
* :mod:`.variants` - which algorithms and which torch variants exist;
* :mod:`.memory` - peak extra resident memory of one step;
* :mod:`.cold` - the fresh-process first-step probe;
* :mod:`.runner` - the interleaved timing loop and the JSON result;
* :mod:`.report` - Markdown and terminal views;
* :mod:`.stats` - the arithmetic (medians, spreads, GB/s, % of ceiling, speed-ups).
"""
