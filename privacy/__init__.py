"""What a curious server can infer from what it receives, measured per strategy.

* :mod:`privacy.observe` turns a recorded federation (the wire, and for SecFPP and its twin
  the :class:`~strategies.secfpp_workflow.ServerView` list) into a
  :class:`~privacy.attacks.ServerObservation`: per site, only prompts the server holds or can
  rebuild from what it was sent.
* :mod:`privacy.attacks` holds the attacks as pure functions (numpy, scikit-learn) over that
  observation and over model outputs the attacker can compute.
* :mod:`privacy.scoring` computes those model outputs with the frozen backbone (torch).
"""
