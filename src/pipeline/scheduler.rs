//! The processes of a run as a cluster's scheduler starts them: `--from-env` reads this
//! process's index, the process count and every process's host from Slurm's variables, so an
//! `srun saeshare run STUDY --from-env` (one task per process) needs no hostfile.
//!
//! - `SLURM_PROCID`: this process's index; `SLURM_NTASKS`: how many.
//! - `SLURM_STEP_NODELIST` (or `SLURM_JOB_NODELIST`, `SLURM_NODELIST`): the hosts, in Slurm's
//!   compressed form (`gpu[01-04,07],login1`), and `SLURM_STEP_TASKS_PER_NODE` (or
//!   `SLURM_TASKS_PER_NODE`): how many tasks each runs (`2(x3),1`). Tasks are numbered host
//!   after host, as Slurm's default block distribution numbers them.
//! - `SAESHARE_PORT` (default 2101): the port of each host's first process; its others take
//!   the next ports.

use std::collections::BTreeMap;

/// The variables `--from-env` reads, by name: the environment, or a map in tests.
pub trait Variables {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process's own environment.
pub struct Environment;

impl Variables for Environment {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Variables for BTreeMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).map(|v| v.to_string())
    }
}

/// This process's place in a run, as the scheduler set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledProcess {
    pub process: usize,
    pub processes: usize,
    /// `host:port` of every process, in index order.
    pub addresses: Vec<String>,
}

/// The default port of each host's first process (timely's examples use the same).
pub const DEFAULT_PORT: u16 = 2101;

impl ScheduledProcess {
    /// Reads Slurm's variables, or says which is missing or malformed and what to do.
    pub fn from_slurm(vars: &impl Variables) -> anyhow::Result<ScheduledProcess> {
        let number = |name: &str| -> anyhow::Result<usize> {
            let value = vars.get(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "--from-env: {name} is not set; start each process with srun (or set \
                     SLURM_PROCID, SLURM_NTASKS, SLURM_JOB_NODELIST and SLURM_TASKS_PER_NODE)"
                )
            })?;
            value
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--from-env: {name}={value:?} is not a count"))
        };
        let process = number("SLURM_PROCID")?;
        let processes = number("SLURM_NTASKS")?;
        anyhow::ensure!(
            process < processes,
            "--from-env: SLURM_PROCID {process} is not one of the SLURM_NTASKS {processes} tasks"
        );
        let first = |names: &[&str]| -> anyhow::Result<(String, String)> {
            names
                .iter()
                .find_map(|n| vars.get(n).map(|v| (n.to_string(), v)))
                .ok_or_else(|| anyhow::anyhow!("--from-env: none of {} is set", names.join(", ")))
        };
        let (nodes_var, nodes) = first(&[
            "SLURM_STEP_NODELIST",
            "SLURM_JOB_NODELIST",
            "SLURM_NODELIST",
        ])?;
        let hosts = expand_hostlist(&nodes)
            .map_err(|e| anyhow::anyhow!("--from-env: {nodes_var}={nodes:?}: {e}"))?;
        let (tasks_var, tasks) = first(&["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"])?;
        let per_node = expand_tasks_per_node(&tasks)
            .map_err(|e| anyhow::anyhow!("--from-env: {tasks_var}={tasks:?}: {e}"))?;
        anyhow::ensure!(
            per_node.len() == hosts.len(),
            "--from-env: {nodes_var} names {} host(s) and {tasks_var} {} count(s)",
            hosts.len(),
            per_node.len()
        );
        let port = match vars.get("SAESHARE_PORT") {
            None => DEFAULT_PORT,
            Some(p) => p
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--from-env: SAESHARE_PORT={p:?} is not a port"))?,
        };
        let mut addresses = Vec::with_capacity(processes);
        for (host, &tasks) in hosts.iter().zip(&per_node) {
            for local in 0..tasks {
                let port = u16::try_from(usize::from(port) + local).map_err(|_| {
                    anyhow::anyhow!("--from-env: SAESHARE_PORT {port} + {local} is past 65535")
                })?;
                addresses.push(format!("{host}:{port}"));
            }
        }
        anyhow::ensure!(
            addresses.len() == processes,
            "--from-env: {tasks_var}={tasks:?} adds up to {} task(s), and SLURM_NTASKS is \
             {processes}",
            addresses.len()
        );
        Ok(ScheduledProcess {
            process,
            processes,
            addresses,
        })
    }
}

/// Slurm's compressed host list expanded: `a[1-3,5],b` is `a1 a2 a3 a5 b`; ranges keep their
/// zero padding (`n[08-10]`), and several bracket groups in one name multiply out.
pub fn expand_hostlist(list: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    for name in split_top_level(list)? {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        hosts.extend(expand_name(name)?);
    }
    if hosts.is_empty() {
        return Err("no host".to_string());
    }
    Ok(hosts)
}

/// Splits at the commas outside brackets.
fn split_top_level(list: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or("a ']' without its '['")?,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a '[' without its ']'".to_string());
    }
    parts.push(&list[start..]);
    Ok(parts)
}

/// One name with its bracket groups expanded, first group outermost.
fn expand_name(name: &str) -> Result<Vec<String>, String> {
    let Some(open) = name.find('[') else {
        return Ok(vec![name.to_string()]);
    };
    let close = open + name[open..].find(']').ok_or("a '[' without its ']'")?;
    let (prefix, ranges, rest) = (&name[..open], &name[open + 1..close], &name[close + 1..]);
    let tails = expand_name(rest)?;
    let mut out = Vec::new();
    for range in ranges.split(',') {
        for number in expand_range(range.trim())? {
            for tail in &tails {
                out.push(format!("{prefix}{number}{tail}"));
            }
        }
    }
    Ok(out)
}

/// `07` or `08-11` (zero padding kept at the width of the first number).
fn expand_range(range: &str) -> Result<Vec<String>, String> {
    let (from, to) = range.split_once('-').unwrap_or((range, range));
    let width = from.len();
    let parse = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("{range:?} is not a number or a range of numbers"))
    };
    let (a, b) = (parse(from)?, parse(to)?);
    if b < a {
        return Err(format!("the range {range:?} runs backwards"));
    }
    if b - a > 100_000 {
        return Err(format!("the range {range:?} names more than 100,000 hosts"));
    }
    Ok((a..=b).map(|n| format!("{n:0width$}")).collect())
}

/// `2(x3),1` expanded to `[2, 2, 2, 1]`.
pub fn expand_tasks_per_node(text: &str) -> Result<Vec<usize>, String> {
    let mut counts = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (count, times) = match part.split_once("(x") {
            Some((count, times)) => {
                let times = times
                    .strip_suffix(')')
                    .ok_or_else(|| format!("{part:?}: a '(x' without its ')'"))?;
                (count, times)
            }
            None => (part, "1"),
        };
        let number = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| format!("{part:?} is not a count or COUNT(xTIMES)"))
        };
        let (count, times) = (number(count)?, number(times)?);
        if times > 100_000 {
            return Err(format!("{part:?} repeats more than 100,000 times"));
        }
        counts.extend(std::iter::repeat_n(count, times));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists_expand_as_slurm_writes_them() {
        assert_eq!(expand_hostlist("login1").unwrap(), ["login1"]);
        assert_eq!(
            expand_hostlist("gpu[01-03,07],cpu5").unwrap(),
            ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]
        );
        assert_eq!(
            expand_hostlist("n[8-10]").unwrap(),
            ["n8", "n9", "n10"],
            "no padding where the first number has none"
        );
        assert_eq!(
            expand_hostlist("rack[1-2]-n[01-02]").unwrap(),
            ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]
        );
        for bad in ["n[1-", "n]1[", "n[3-1]", "n[a-b]", ""] {
            assert!(expand_hostlist(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tasks_per_node_expand_and_number_the_tasks_host_after_host() {
        assert_eq!(expand_tasks_per_node("2(x3),1").unwrap(), [2, 2, 2, 1]);
        assert!(expand_tasks_per_node("2(x3").is_err());
        let vars: BTreeMap<&str, &str> = [
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "5"),
            ("SLURM_JOB_NODELIST", "gpu[1-2],cpu7"),
            ("SLURM_TASKS_PER_NODE", "2(x2),1"),
            ("SAESHARE_PORT", "4000"),
        ]
        .into();
        let scheduled = ScheduledProcess::from_slurm(&vars).unwrap();
        assert_eq!(scheduled.process, 3);
        assert_eq!(
            scheduled.addresses,
            [
                "gpu1:4000",
                "gpu1:4001",
                "gpu2:4000",
                "gpu2:4001",
                "cpu7:4000"
            ]
        );
        // The step's own lists win over the job's.
        let mut step = vars.clone();
        step.insert("SLURM_STEP_NODELIST", "gpu9");
        step.insert("SLURM_STEP_TASKS_PER_NODE", "5");
        let addresses = ScheduledProcess::from_slurm(&step).unwrap().addresses;
        assert_eq!(addresses[4], "gpu9:4004");
    }

    #[test]
    fn missing_or_contradicting_variables_say_what_to_do() {
        let error = |vars: BTreeMap<&str, &str>| {
            ScheduledProcess::from_slurm(&vars).unwrap_err().to_string()
        };
        assert!(error(BTreeMap::new()).contains("SLURM_PROCID is not set"));
        let mut vars: BTreeMap<&str, &str> = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_JOB_NODELIST", "a[1-2]"),
            ("SLURM_TASKS_PER_NODE", "1(x2)"),
        ]
        .into();
        assert!(error(vars.clone()).contains("adds up to 2 task(s)"));
        vars.insert("SLURM_TASKS_PER_NODE", "4");
        assert!(error(vars.clone()).contains("2 host(s) and SLURM_TASKS_PER_NODE 1"));
        vars.insert("SLURM_PROCID", "4");
        assert!(error(vars).contains("not one of"));
    }
}
