"""Who may use a name: backbone names and adaptation-method names are claimed by
registry.toml, by plugins and by the built-in plugins, and must not silently shadow
each other. One rule for both:

- one claim: it holds;
- a claim with ``override=True`` replaces the others, deliberately (two such: contested);
- names zoo-adapt ships win against a third party's plain claim, which is reported;
- otherwise two plain claims make the name contested: it cannot be used until the user
  settles it (a registry file re-points it, or one plugin is disabled), and the error
  names both sides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from zoo_adapt.errors import ZooAdaptError


@dataclass(frozen=True)
class Claim:
    name: str
    value: Any
    label: str  # how messages name the claimant: "plugin 'x' (dist 1.0)", "zoo-adapt's registry.toml"
    shipped: bool = False  # zoo-adapt's own
    override: bool = False


@dataclass
class Settled:
    winners: dict[str, Claim] = field(default_factory=dict)
    replaced: dict[str, list[Claim]] = field(default_factory=dict)  # by a deliberate override
    contested: dict[str, str] = field(default_factory=dict)  # name -> the error naming both sides
    problems: list[str] = field(default_factory=list)  # one line each, for the user

    def usable(self) -> dict[str, Any]:
        """Each winner's value with `replaces` set to the plugins its override replaced
        (for values that are dataclasses with `plugin` and `replaces` fields)."""
        return {
            name: dataclasses.replace(c.value, replaces=tuple(r.value.plugin for r in self.replaced.get(name, ())))
            for name, c in self.winners.items()
        }

    def get(self, name: str, unknown: str) -> Any:
        """The value that holds `name`; an error naming both sides when it is contested,
        `unknown` when nobody claims it."""
        if name in self.contested:
            raise ZooAdaptError(self.contested[name])
        if name not in self.winners:
            raise ZooAdaptError(unknown)
        return self.winners[name].value


def settle(claims: Iterable[Claim], what: str, report: Callable[[str], None] | None = None) -> Settled:
    """Apply the rule above to `claims` (in registration order); `what` names the kind of
    name in messages ("backbone name", "adaptation method"); `report` gets each problem."""
    by_name: dict[str, list[Claim]] = {}
    for c in claims:
        by_name.setdefault(c.name, []).append(c)
    out = Settled()
    for name, group in by_name.items():
        overrides = [c for c in group if c.override]
        plain = [c for c in group if not c.override]
        shipped = [c for c in plain if c.shipped]
        if len(overrides) == 1:
            out.winners[name], out.replaced[name] = overrides[0], plain
        elif len(group) == 1:
            out.winners[name] = group[0]
        elif not overrides and len(shipped) == 1:
            out.winners[name] = shipped[0]
            out.problems += [
                f"{c.label}: {what} {name!r} is zoo-adapt's own ({shipped[0].label}), so its "
                "claim is ignored; register another name, or pass override=True to replace it"
                for c in plain
                if c is not shipped[0]
            ]
        else:
            sides = overrides or plain
            verb = "overridden" if overrides else "claimed"
            message = (
                f"{what} {name!r} is {verb} by both {' and '.join(sorted(c.label for c in sides))}; "
                "disable one of them (--disable-plugin NAME)"
                + (" or re-point the name in a registry file (--registry FILE)" if "backbone" in what else "")
            )
            out.contested[name] = message
            out.problems.append(message)
    if report is not None:
        for problem in out.problems:
            report(problem)
    return out
