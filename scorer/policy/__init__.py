"""What a decision tells people to do: the decision policy (approve / review / decline bands) and the rules beside the model."""
