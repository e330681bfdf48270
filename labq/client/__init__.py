"""The testscript's side of the wire.

A :class:`~labq.client.run.Run` submits through its :mod:`.submitter`,
which checks each call (:mod:`.submission`), builds its message
(:mod:`.messages`) and publishes it (:mod:`.publish`, :mod:`.wire`);
then it reads the outcomes as they come (:mod:`.streams`,
:mod:`.progress`), finds runs again (:mod:`.run_info`), cancels
(:mod:`.cancel`) and reports (:mod:`.report`). The workers settle the tasks
of dead workers (labq.worker.reaper); a run only reads their results. :mod:`.pcall` is
pyATS's ``pcall`` on top of a run. What a run knows of its tasks is one
:class:`~labq.client.run_state.RunState`.

Nothing here runs on a worker.
"""
