//! Maximum-weight one-to-one matching of a sparse bipartite graph, exactly: the shortest
//! augmenting path method of Jonker and Volgenant (the method behind scipy's
//! `linear_sum_assignment`), with Dijkstra's search over the edges that exist instead of a scan
//! of a dense matrix, so that time and memory follow the edges, not `rows x columns`.
//!
//! Leaving a row unmatched scores 0, so the matching maximises the total weight over every
//! matching, not only over the perfect ones: each row gets a private column of weight 0 (its
//! "unmatched" choice), which makes the rectangular assignment always feasible and keeps the
//! graph as sparse as it was.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// An edge: `(row, column, weight)`.
pub type Edge = (u32, u32, f64);

/// The rows' edges, by row (compressed sparse rows).
struct Graph {
    starts: Vec<usize>,
    columns: Vec<u32>,
    costs: Vec<f64>,
}

impl Graph {
    /// Costs are the weights negated (a minimum-cost assignment); edges of weight <= 0 or not
    /// finite are left out, since leaving both ends unmatched scores at least as much.
    fn new(rows: usize, edges: &[Edge]) -> Graph {
        let mut counts = vec![0usize; rows + 1];
        for &(r, _, w) in edges {
            if w > 0.0 && w.is_finite() {
                counts[r as usize + 1] += 1;
            }
        }
        for r in 0..rows {
            counts[r + 1] += counts[r];
        }
        let mut at = counts.clone();
        let mut columns = vec![0u32; counts[rows]];
        let mut costs = vec![0f64; counts[rows]];
        for &(r, c, w) in edges {
            if w > 0.0 && w.is_finite() {
                let slot = &mut at[r as usize];
                (columns[*slot], costs[*slot]) = (c, -w);
                *slot += 1;
            }
        }
        Graph {
            starts: counts,
            columns,
            costs,
        }
    }

    /// Row `r`'s edges, its private column (`columns + r`, cost 0) last.
    fn edges(&self, r: usize, columns: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let span = self.starts[r]..self.starts[r + 1];
        (self.columns[span.clone()].iter().zip(&self.costs[span]))
            .map(|(&c, &cost)| (c as usize, cost))
            .chain(std::iter::once((columns + r, 0.0)))
    }
}

/// A distance in the search, ordered for the heap (costs are finite).
#[derive(Clone, Copy, PartialEq)]
struct Distance(f64);

impl Eq for Distance {}

impl PartialOrd for Distance {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Distance {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One search for a shortest augmenting path, its state reset through `touched` only, so
/// that a search costs what it visits, not the number of columns.
struct Search {
    distance: Vec<f64>,
    done: Vec<bool>,
    /// The row a column was reached from, and that edge's cost.
    predecessor: Vec<(u32, f64)>,
    touched: Vec<usize>,
    finished: Vec<usize>,
    heap: BinaryHeap<Reverse<(Distance, usize)>>,
}

impl Search {
    fn new(all: usize) -> Search {
        Search {
            distance: vec![f64::INFINITY; all],
            done: vec![false; all],
            predecessor: vec![(0, 0.0); all],
            touched: Vec::new(),
            finished: Vec::new(),
            heap: BinaryHeap::new(),
        }
    }

    /// Reaches row `row`'s columns from distance `base`, `u_row` the row's potential.
    fn relax(
        &mut self,
        graph: &Graph,
        columns: usize,
        v: &[f64],
        (row, base, u_row): (usize, f64, f64),
    ) {
        for (c, cost) in graph.edges(row, columns) {
            if self.done[c] {
                continue;
            }
            // Reduced costs are >= 0 but for rounding.
            let d = base + (cost - u_row - v[c]).max(0.0);
            if d < self.distance[c] {
                if self.distance[c] == f64::INFINITY {
                    self.touched.push(c);
                }
                self.distance[c] = d;
                self.predecessor[c] = (row as u32, cost);
                self.heap.push(Reverse((Distance(d), c)));
            }
        }
    }

    /// The nearest column not yet finished, finished now.
    fn next(&mut self) -> Option<(usize, f64)> {
        while let Some(Reverse((Distance(d), c))) = self.heap.pop() {
            if !self.done[c] && d <= self.distance[c] {
                self.done[c] = true;
                self.finished.push(c);
                return Some((c, d));
            }
        }
        None
    }

    fn reset(&mut self) {
        for &c in &self.touched {
            self.distance[c] = f64::INFINITY;
            self.done[c] = false;
        }
        self.touched.clear();
        self.finished.clear();
        self.heap.clear();
    }
}

/// The matching of largest total weight between `rows` rows and `columns` columns over
/// `edges` (edges of weight <= 0 count for nothing): for each row, its column and that edge's
/// weight, or `None`.
pub fn max_weight_matching(rows: usize, columns: usize, edges: &[Edge]) -> Vec<Option<(u32, f64)>> {
    let graph = Graph::new(rows, edges);
    let all = columns + rows;
    // Column potentials `v`; a matched row's own is implied, `u_r = cost(r, col) - v_col`, so
    // that every reduced cost `cost - u - v` stays >= 0 and the matched edges' are 0.
    let mut v = vec![0f64; all];
    let mut column_row: Vec<Option<u32>> = vec![None; all];
    let mut row_column = vec![0usize; rows];
    let mut row_cost = vec![0f64; rows];
    let mut search = Search::new(all);
    for start in 0..rows {
        // The free row's potential: the smallest of its costs less the columns'.
        let u_start = graph
            .edges(start, columns)
            .map(|(c, cost)| cost - v[c])
            .fold(f64::INFINITY, f64::min);
        search.relax(&graph, columns, &v, (start, 0.0, u_start));
        let (end, shortest) = loop {
            let (c, d) = search
                .next()
                .expect("every row reaches its own free column");
            match column_row[c] {
                None => break (c, d),
                Some(r) => {
                    let r = r as usize;
                    let u_r = row_cost[r] - v[row_column[r]];
                    search.relax(&graph, columns, &v, (r, d, u_r));
                }
            }
        };
        // Every finished column moves by how much nearer than the end it was: the path's
        // edges become tight and no reduced cost goes negative.
        for &c in &search.finished {
            v[c] += search.distance[c] - shortest;
        }
        // Augment along the path, back to the start.
        let mut c = end;
        loop {
            let (r, cost) = search.predecessor[c];
            let r = r as usize;
            let previous = row_column[r];
            column_row[c] = Some(r as u32);
            row_column[r] = c;
            row_cost[r] = cost;
            if r == start {
                break;
            }
            c = previous;
        }
        search.reset();
    }
    (row_column.into_iter().zip(row_cost))
        .map(|(c, cost)| (c < columns).then_some((c as u32, -cost)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every matching's best total, by trying them all (small cases).
    fn brute_force(rows: usize, columns: usize, weight: &[Vec<f64>]) -> f64 {
        fn go(r: usize, used: &mut Vec<bool>, weight: &[Vec<f64>], columns: usize) -> f64 {
            if r == weight.len() {
                return 0.0;
            }
            let mut best = go(r + 1, used, weight, columns);
            for c in 0..columns {
                if !used[c] && weight[r][c] > 0.0 {
                    used[c] = true;
                    best = best.max(weight[r][c] + go(r + 1, used, weight, columns));
                    used[c] = false;
                }
            }
            best
        }
        let _ = rows;
        go(0, &mut vec![false; columns], weight, columns)
    }

    #[test]
    fn the_matching_is_one_to_one_and_as_heavy_as_the_best_of_every_matching() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for trial in 0..300 {
            let rows = 1 + (next() % 6) as usize;
            let columns = 1 + (next() % 6) as usize;
            let mut weight = vec![vec![0.0; columns]; rows];
            let mut edges = Vec::new();
            for (r, row) in weight.iter_mut().enumerate() {
                for (c, w) in row.iter_mut().enumerate() {
                    if next() % 3 != 0 {
                        // Some negative, some tied.
                        *w = ((next() % 9) as f64 - 2.0) / 4.0;
                        edges.push((r as u32, c as u32, *w));
                    }
                }
            }
            let matching = max_weight_matching(rows, columns, &edges);
            let mut used = vec![false; columns];
            let mut total = 0.0;
            for (r, c) in matching.iter().enumerate() {
                if let Some((c, w)) = *c {
                    assert_eq!(w, weight[r][c as usize], "trial {trial}: the edge's weight");
                    assert!(!used[c as usize], "trial {trial}: column {c} twice");
                    used[c as usize] = true;
                    assert!(weight[r][c as usize] > 0.0, "trial {trial}: a useless edge");
                    total += weight[r][c as usize];
                }
            }
            let best = brute_force(rows, columns, &weight);
            assert!(
                (total - best).abs() < 1e-12,
                "trial {trial}: {total} against the best {best}"
            );
        }
    }
}
