"""Chain of thought: step-by-step prose that ends with `Final answer: N`.

Instruction wording as in the SIKeD reference prompt (`COT-prompt.txt`); solutions written here.
"""

from __future__ import annotations

from distill.answers import extract_answer
from distill.strategies.base import Parsed, Strategy, clean_completion

NAME = "cot"

INSTRUCTION = "Solve the given math problem step by step, put your final answer after 'Final answer: '."

SOLUTIONS = (
    # gsm8k/train/3365: shirts and tax
    ("The 3 shirts cost 3 * $20 = $60 before tax.\n"
     "The tax is 10% of $60, which is $60 * 10 / 100 = $6.\n"
     "So John paid $60 + $6 = $66 in total.\n"
     "Final answer: 66"),
    # gsm8k/train/1168: tulips
    ("Elrond got twice as many tulips as Arwen, so he got 2 * 20 = 40 tulips.\n"
     "Together they got 20 + 40 = 60 tulips.\n"
     "Final answer: 60"),
    # gsm8k/train/6454: turtles
    ("Three times the original 9 turtles is 3 * 9 = 27, and two less than that is 27 - 2 = 25 turtles, "
     "which climbed onto the log.\n"
     "The larger group on the log had 9 + 25 = 34 turtles.\n"
     "Half of them ran away, so 34 / 2 = 17 turtles remained on the log.\n"
     "Final answer: 17"),
    # gsm8k/train/789: injury
    ("The injury takes 5 times as long as the 3 days of pain to heal: 5 * 3 = 15 days.\n"
     "He waits another 3 days before working out again, so that is 15 + 3 = 18 days.\n"
     "Then he waits 3 weeks, which is 3 * 7 = 21 days, before lifting heavy.\n"
     "In total that is 18 + 21 = 39 days.\n"
     "Final answer: 39"),
    # gsm8k/train/5259: fish
    ("Let x be the number of fish that were in the tank. I caught x - 4 fish and added them.\n"
     "Now the tank has x + (x - 4) = 20 fish, so 2x = 24 and x = 12.\n"
     "So I added 12 - 4 = 8 fish.\n"
     "Final answer: 8"),
    # gsm8k/train/3016: chlorine
    ("The pool holds 10 * 8 * 6 = 480 cubic feet of water.\n"
     "One quart treats 120 cubic feet, so Gary needs 480 / 120 = 4 quarts.\n"
     "At $3 a quart he spends 4 * $3 = $12.\n"
     "Final answer: 12"),
    # gsm8k/train/7076: Oreos and cookies
    ("The ratio 4:9 has 4 + 9 = 13 parts, and there are 65 items, so each part is 65 / 13 = 5 items.\n"
     "There are 4 * 5 = 20 Oreos and 9 * 5 = 45 cookies.\n"
     "The Oreos cost 20 * $2 = $40 and the cookies cost 45 * $3 = $135.\n"
     "Zane spent $135 - $40 = $95 more on cookies than on Oreos.\n"
     "Final answer: 95"),
    # gsm8k/train/3289: hotel rooms
    ("Each floor of the first wing has 6 * 32 = 192 rooms, so its 9 floors have 9 * 192 = 1728 rooms.\n"
     "Each floor of the second wing has 9 * 40 = 360 rooms, so its 7 floors have 7 * 360 = 2520 rooms.\n"
     "The hotel has 1728 + 2520 = 4248 rooms in total.\n"
     "Final answer: 4248"),
)


def parse(text: str) -> Parsed:
    """Read a CoT completion: any prose, answer by the rules of `distill.answers.extract_answer`."""
    solution = clean_completion(text)
    found = extract_answer(solution)
    return Parsed(NAME, solution, value=found.value, rule=found.rule)


STRATEGY = Strategy(NAME, INSTRUCTION, SOLUTIONS, parse)
