"""Integrations with training frameworks, each imported on its own
(``from vgcore.integrations.lightning import WatchCallback``) so that ``import vgcore`` never
imports a framework."""
