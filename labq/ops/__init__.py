"""What the lab admin runs: ``labq status`` (:mod:`.lab_status`), ``labq
devices`` (:mod:`.device_list`) and ``labq scale`` (:mod:`.scaling`).

Each reads Redis or talks to workers from outside; neither a testscript nor
a worker imports this package.
"""
