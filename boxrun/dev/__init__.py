"""`boxrun dev`: the whole system on one machine, on embedded parts."""
