"""Model assessment: candidates answer a dataset's records, a judge or reference metrics say
how well, and a summary says by how much and whether it is more than noise."""
