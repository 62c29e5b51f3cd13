"""Compose-style stack files: loading (validate, interpolate, merge), planning Shoal objects, deploying.

``loader.load(files)`` gives an immutable :class:`~swarmctl.stack.model.ComposeConfig`;
``convert.plan(config, name)`` the :class:`~swarmctl.stack.model.StackPlan` of Shoal specs;
``deploy.deploy(client, plan)`` writes it. Each step raises a :class:`~swarmctl.stack.errors.StackError`
before anything is created when the input is wrong.
"""
