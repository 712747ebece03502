#!/usr/bin/env python3
"""Renders Shoal's Helm chart as `helm template` does, for machines without helm (the tests).

It knows the part of Helm's template language the chart uses, and nothing more:
  {{ .Values.a.b }}  {{ $.Release.Name }}  .Release.Namespace  .Chart.Name/Version/AppVersion
  pipelines with quote, default, toYaml, indent, nindent, int, until, b64enc
  {{ if X }} ... {{ else }} ... {{ end }}   {{ range $i := X }} ... {{ end }}
  {{- and -}} trim the whitespace beside them.
Anything else is an error, so the chart stays within what is checked.

  render.py CHART_DIR [-f VALUES.yaml]... [--name RELEASE] [--namespace NS]
"""
import argparse
import base64
import json
import os
import re
import sys

import yaml

ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


class TemplateError(Exception):
    pass


def tokens(text):
    """Text and actions, with {{- and -}} trimming applied."""
    out, pos = [], 0
    for m in ACTION.finditer(text):
        before = text[pos:m.start()]
        if m.group(1):
            before = before.rstrip(" \t\r\n")
        out.append(("text", before))
        out.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip(" \t\r\n"))
    out.append(("text", text[pos:]))
    return out


def parse(toks, i=0, until=()):
    """A list of nodes up to an action in `until`; returns (nodes, index, the stop action)."""
    nodes = []
    while i < len(toks):
        kind, value = toks[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
            continue
        word = value.split(None, 1)[0] if value else ""
        if word in until:
            return nodes, i, value
        if word == "if":
            then, i, stop = parse(toks, i + 1, ("else", "end"))
            other = []
            if stop == "else":
                other, i, stop = parse(toks, i + 1, ("end",))
            nodes.append(("if", value[2:].strip(), then, other))
            i += 1
        elif word == "range":
            m = re.fullmatch(r"range\s+\$(\w+)\s*:=\s*(.+)", value, re.S)
            if not m:
                raise TemplateError(f"unsupported range: {value}")
            body, i, _ = parse(toks, i + 1, ("end",))
            nodes.append(("range", m.group(1), m.group(2), body))
            i += 1
        elif word in ("else", "end", "define", "template", "include", "with", "block"):
            raise TemplateError(f"unsupported action: {value}")
        else:
            nodes.append(("expr", value))
            i += 1
    if until:
        raise TemplateError(f"missing {{{{ end }}}} (wanted one of {until})")
    return nodes, i, None


def split_top(text, sep):
    """Splits at `sep` outside quotes and parentheses."""
    parts, depth, quote, cur = [], 0, False, ""
    for c in text:
        if c == '"' and not cur.endswith("\\"):
            quote = not quote
        elif not quote and c == "(":
            depth += 1
        elif not quote and c == ")":
            depth -= 1
        if not quote and depth == 0 and (c == sep or (sep == " " and c.isspace())):
            parts.append(cur)
            cur = ""
        else:
            cur += c
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def lookup(root, path, what):
    value = root
    for key in [k for k in path.split(".") if k]:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def truthy(v):
    return not (v is None or v is False or v == 0 or v == "" or v == [] or v == {})


def go_str(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


FUNCS = {
    "quote": lambda x: json.dumps(go_str(x)),
    "default": lambda d, x=None: x if truthy(x) else d,
    "toYaml": lambda x: "" if x is None else yaml.safe_dump(x, default_flow_style=False, sort_keys=True).rstrip("\n"),
    "indent": lambda n, s: "\n".join(" " * int(n) + line for line in go_str(s).split("\n")),
    "nindent": lambda n, s: "\n" + FUNCS["indent"](n, s),
    "int": lambda x: int(x or 0),
    "until": lambda n: list(range(int(n))),
    "b64enc": lambda s: base64.b64encode(go_str(s).encode()).decode(),
}


def term(t, ctx):
    if t.startswith("(") and t.endswith(")"):
        return evaluate(t[1:-1], ctx)
    if t.startswith('"') and t.endswith('"'):
        return json.loads(t)
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    if t == "true" or t == "false":
        return t == "true"
    if t.startswith("$."):
        return lookup(ctx["$"], t[2:], t)
    if t.startswith("."):
        if ctx.get("in_range"):
            # Helm's `.` inside range is the element, which this renderer does not model.
            raise TemplateError(f"{t} inside range: write $.{t[1:]}")
        return lookup(ctx["$"], t[1:], t)
    if t.startswith("$"):
        name = t[1:]
        if name not in ctx["vars"]:
            raise TemplateError(f"undefined variable {t}")
        return ctx["vars"][name]
    raise TemplateError(f"unsupported term: {t}")


def command(cmd, ctx, piped):
    words = split_top(cmd, " ")
    if words[0] in FUNCS:
        args = [term(w, ctx) for w in words[1:]] + piped
        return FUNCS[words[0]](*args)
    if len(words) != 1 or piped:
        raise TemplateError(f"unsupported command: {cmd}")
    return term(words[0], ctx)


def evaluate(expr, ctx):
    value, piped = None, []
    for stage in split_top(expr, "|"):
        value = command(stage, ctx, piped)
        piped = [value]
    return value


def render(nodes, ctx):
    out = []
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "expr":
            out.append(go_str(evaluate(node[1], ctx)))
        elif kind == "if":
            out.append(render(node[2] if truthy(evaluate(node[1], ctx)) else node[3], ctx))
        elif kind == "range":
            for item in evaluate(node[2], ctx) or []:
                inner = dict(ctx, vars=dict(ctx["vars"], **{node[1]: item}), in_range=True)
                out.append(render(node[3], inner))
    return "".join(out)


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chart")
    ap.add_argument("-f", "--values", action="append", default=[])
    ap.add_argument("--name", default="shoal")
    ap.add_argument("--namespace", default="shoal")
    args = ap.parse_args()
    with open(os.path.join(args.chart, "Chart.yaml")) as f:
        chart = yaml.safe_load(f)
    with open(os.path.join(args.chart, "values.yaml")) as f:
        values = yaml.safe_load(f) or {}
    for path in args.values:
        with open(path) as f:
            merge(values, yaml.safe_load(f) or {})
    root = {
        "Values": values,
        "Release": {"Name": args.name, "Namespace": args.namespace, "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart.get("appVersion", "")},
    }
    ctx = {"$": root, "vars": {}}
    tdir = os.path.join(args.chart, "templates")
    docs = []
    for name in sorted(os.listdir(tdir)):
        if not name.endswith(".yaml") or name.startswith("_"):
            continue
        with open(os.path.join(tdir, name)) as f:
            text = f.read()
        try:
            nodes, _, _ = parse(tokens(text))
            rendered = render(nodes, ctx)
        except TemplateError as e:
            sys.exit(f"{name}: {e}")
        for doc in re.split(r"(?m)^---[ \t]*$", rendered):
            body = "\n".join(l for l in doc.strip("\n").split("\n") if not l.startswith("#")).strip()
            if body:
                docs.append(f"---\n# Source: {chart['name']}/templates/{name}\n{doc.strip(chr(10))}\n")
    sys.stdout.write("".join(docs))


if __name__ == "__main__":
    main()
