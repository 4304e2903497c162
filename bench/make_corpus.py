"""Generate a scaled corpus of realistic, varied documents (Markdown and HTML) for benchmarks.

    python bench/make_corpus.py OUT_DIR --docs 1000 [--seed 7]

Deterministic for a seed. Each document is a small handbook page: a title, 1-3 sections with headings, paragraphs of
policy-like prose built from a domain vocabulary, sometimes a list; 0.3-4 KB, so 1-4 chunks at 256 tokens.
One document in five is HTML, the rest Markdown, spread over nested folders like a real document store.

    python bench/make_corpus.py OUT_DIR --docs 1400 --small

``--small``: many short technical abstracts as Markdown files (the shape of many real knowledge bases): a title, an
author line, an abstract of 50-230 words (under an "Abstract" heading in about 3 of 10) and keywords; 0.5-2 KB, so 1-3
chunks at 256 tokens (a sample of 200: 97 with one chunk, 65 with two, 38 with three).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

TOPICS = ["security", "travel", "expenses", "onboarding", "incident response", "data retention", "procurement",
          "remote work", "access control", "release management", "backups", "vendor review", "privacy",
          "code review", "on-call", "hardware", "training", "accessibility", "budgeting", "audit"]
SUBJECTS = ["Every employee", "The team lead", "The requester", "An approver", "The service owner", "Finance",
            "The security office", "Each contractor", "The on-call engineer", "The project sponsor"]
VERBS = ["must document", "should review", "is responsible for approving", "may request", "needs to archive",
         "will escalate", "must encrypt", "should rotate", "is expected to report", "has to confirm"]
OBJECTS = ["the quarterly access list", "all travel bookings above the threshold", "customer data exports",
           "the incident timeline", "signing keys and API tokens", "vendor contracts", "the release checklist",
           "backup restore tests", "hardware inventory records", "expense receipts", "training certificates",
           "the data processing agreement", "production database credentials", "the disaster recovery plan"]
CLAUSES = ["within five working days", "before the end of each quarter", "using the approved ticketing system",
           "after consulting the policy owner", "unless an exception was granted in writing",
           "following the four-eyes principle", "in line with the regional regulations", "at least once a year",
           "as soon as a deviation is detected", "with a copy to the compliance mailbox"]
HEADINGS = ["Scope", "Rules", "Exceptions", "Responsibilities", "Procedure", "Records", "Escalation", "Review"]
WHY = ["This keeps audits short and predictable.", "Exceptions are logged and reviewed monthly.",
       "Missing records delay reimbursements.", "Repeated violations are escalated to the department head.",
       "The process is described in more detail in the appendix.", "Questions go to the internal help desk.",
       "Automated reminders are sent two days before the deadline.", "Shortcuts here have caused incidents before."]


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(CLAUSES)}."


def paragraph(rng: random.Random) -> str:
    parts = [sentence(rng) for _ in range(rng.randint(2, 5))]
    if rng.random() < 0.6:
        parts.append(rng.choice(WHY))
    return " ".join(parts)


def document(rng: random.Random, n: int) -> tuple[str, list[tuple[str, list[str], list[str] | None]]]:
    topic = rng.choice(TOPICS)
    title = f"{topic.title()} policy {n:05d}"
    sections = []
    for s in range(rng.randint(1, 3)):
        heading = f"{s + 1}. {rng.choice(HEADINGS)}"
        paras = [paragraph(rng) for _ in range(rng.randint(1, 3))]
        items = [sentence(rng) for _ in range(rng.randint(2, 4))] if rng.random() < 0.25 else None
        sections.append((heading, paras, items))
    return title, sections


FIELDS = ["distributed storage", "query optimisation", "stream processing", "compiler design", "network security",
          "machine translation", "graph databases", "embedded systems", "information retrieval", "cache coherence",
          "formal verification", "image segmentation", "consensus protocols", "energy-aware scheduling",
          "program synthesis", "time-series forecasting", "wireless sensing", "recommender systems"]
METHODS = ["a lock-free log-structured index", "an adaptive sampling scheme", "a learned cost model",
           "a two-phase commit variant", "a sparse attention mechanism", "a vectorised execution engine",
           "a probabilistic type system", "a hierarchical clustering step", "a gradient-free tuner",
           "an incremental checkpointing protocol", "a contrastive pre-training objective", "a bounded model checker"]
RESULTS = ["reduces tail latency by {n}%", "improves throughput by {n}% on commodity hardware",
           "cuts memory use by {n}% without loss of accuracy", "raises recall at ten by {n} points",
           "shortens recovery time by {n}%", "lowers energy consumption by {n}%", "halves the number of false alarms"]
SETTINGS = ["on three public benchmarks", "in a production deployment with {n} nodes", "across {n} real workloads",
            "on a cluster of {n} machines", "in simulation and on a hardware prototype", "on traces from {n} users"]
NAMES = ["A. Novak", "B. Okafor", "C. Lindqvist", "D. Haddad", "E. Moreau", "F. Tanaka", "G. Ruiz", "H. Kowalski",
         "I. Petrov", "J. Mensah", "K. Iyer", "L. Brennan"]


def abstract(rng: random.Random, n: int) -> str:
    """One short technical abstract as Markdown: 50-230 words, so 1-3 chunks of at most 256 tokens."""
    field, method = rng.choice(FIELDS), rng.choice(METHODS)
    title = f"{method[2:].capitalize() if method.startswith('a ') else method[3:].capitalize()} for {field} ({n:05d})"
    words_wanted = rng.randint(50, 230)
    sentences = [f"We study {field} and present {method}."]
    while sum(len(s.split()) for s in sentences) < words_wanted:
        kind = rng.random()
        if kind < 0.4:
            sentences.append(f"Our approach {rng.choice(RESULTS).format(n=rng.randint(3, 60))} "
                             f"{rng.choice(SETTINGS).format(n=rng.randint(4, 900))}.")
        elif kind < 0.7:
            sentences.append(f"Unlike prior work on {rng.choice(FIELDS)}, it relies on {rng.choice(METHODS)} "
                             f"and needs no manual tuning.")
        else:
            sentences.append(f"We also analyse {rng.choice(METHODS)} and show when it fails "
                             f"{rng.choice(SETTINGS).format(n=rng.randint(4, 900))}.")
    authors = ", ".join(rng.sample(NAMES, rng.randint(1, 4)))
    keywords = ", ".join(rng.sample(FIELDS, 3))
    section = "## Abstract\n\n" if rng.random() < 0.3 else ""  # a heading of its own makes a chunk of its own
    return f"# {title}\n\n*{authors}*\n\n{section}{' '.join(sentences)}\n\n**Keywords:** {keywords}\n"


def generate_small(out: Path, docs: int, seed: int = 7) -> int:
    """Many small Markdown abstracts (1-3 chunks each) in 20 folders; deterministic for a seed. Returns bytes written."""
    rng = random.Random(seed)
    total = 0
    for n in range(docs):
        folder = out / f"venue-{n % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        text = abstract(rng, n)
        (folder / f"abstract-{n:05d}.md").write_text(text)
        total += len(text)
    return total


def to_markdown(title, sections) -> str:
    out = [f"# {title}", ""]
    for heading, paras, items in sections:
        out += [f"## {heading}", ""]
        for p in paras:
            out += [p, ""]
        if items:
            out += [f"- {i}" for i in items] + [""]
    return "\n".join(out)


def to_html(title, sections) -> str:
    body = [f"<h1>{title}</h1>"]
    for heading, paras, items in sections:
        body.append(f"<h2>{heading}</h2>")
        body += [f"<p>{p}</p>" for p in paras]
        if items:
            body.append("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    return f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{''.join(body)}</body></html>\n"


def generate(out: Path, docs: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    total = 0
    for n in range(docs):
        title, sections = document(rng, n)
        folder = out / f"area-{n % 10:02d}" / f"batch-{n // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        if n % 5 == 4:
            path, text = folder / f"doc-{n:05d}.html", to_html(title, sections)
        else:
            path, text = folder / f"doc-{n:05d}.md", to_markdown(title, sections)
        path.write_text(text)
        total += len(text)
    return total


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--small", action="store_true", help="many short abstracts instead of handbook pages")
    args = parser.parse_args()
    size = (generate_small if args.small else generate)(args.out, args.docs, args.seed)
    print(f"{args.docs} documents, {size / 1e6:.1f} MB in {args.out}")
