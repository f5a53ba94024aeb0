//! The embedded decision contract, loaded once into biscuit's Datalog engine.
//!
//! The contract is written as named rules (`owns`, `narrowed`, …) and an ordered list of
//! policies; the first policy that holds decides. Its rules are not recursive and each derived
//! predicate has exactly one rule, so at load every policy is *unfolded*: a derived predicate in
//! a policy body is replaced by its rule's body, variables renamed apart. A decision then needs
//! no fixpoint: the request's facts are interned into a fresh fact set and the policies are
//! matched in order. On the 100-grant fixture this keeps a decision under 20 µs, where running
//! the same rules to a fixpoint in a cloned biscuit world cost about 50 µs.
//!
//! Biscuit's Datalog has no negation. Every "not" of the Rego contract is carried by policy
//! order (a later policy only runs when every earlier one failed), "every requested scope is
//! in S" by set inclusion (`$S.contains($requested)`), and a failing inclusion by the negated
//! expression `!$S.contains(…)`, which negates a value, not the existence of facts.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use biscuit_auth::builder::{Convert, Expression, Op, Policy, PolicyKind, Predicate, Rule, Term};
use biscuit_auth::datalog::{self, FactSet, Origin, SymbolTable, TrustedOrigins};
use biscuit_auth::AuthorizerLimits;

use super::PolicyError;

/// The contract's text; its SHA-256 identifies the decision brain in metrics and approvals.
pub(crate) const SOURCE: &str = include_str!("decision_contract.datalog");

/// Limits every evaluation runs under: `max_facts` bounds the facts one request may add,
/// `max_iterations` the policy queries matched, `max_time` the wall-clock time of the whole
/// evaluation. A request adds a few dozen facts and matches at most 20 policy queries, so
/// these only stop pathological inputs; reaching one denies. The time limit is generous
/// because a busy two-core host can preempt an evaluation for milliseconds, and a spurious
/// deny is a user-visible failure.
pub(crate) fn default_limits() -> AuthorizerLimits {
    AuthorizerLimits {
        max_facts: 1_000,
        max_iterations: 100,
        max_time: Duration::from_millis(50),
    }
}

/// Which allow rule held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AllowRule {
    /// `caracal-bootstrap`.
    Bootstrap,
    /// `caracal-<binding_key>-mint`.
    Mint,
    /// `caracal-workload-mint`.
    Workload,
    /// `caracal-<binding_key>-use`.
    Use,
}

/// What the first holding policy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// An allow rule.
    Allow(AllowRule),
    /// A deny with its reason.
    Deny(&'static str),
    /// Rego would have failed with a conflict (two values for one complete rule or function).
    Conflict(&'static str),
    /// A fact, iteration or time limit was reached.
    LimitExceeded,
}

/// Every outcome name the contract may use, so verdicts carry static strings.
const DENY_REASONS: [&str; 9] = [
    "restriction_active",
    "malformed_risk_data",
    "malformed_approval_data",
    "resource_not_granted",
    "delegation_scope_exceeded",
    "confinement_violation",
    "role_scope_mismatch",
    "mandate_target_mismatch",
    "no_rule_matched",
];
const CONFLICTS: [&str; 2] = ["bootstrap_and_workload_mint", "risk_tier"];

/// The contract, converted once into biscuit's Datalog form: its symbols, its unfolded
/// policies in order, and the step-up query.
pub(crate) struct Contract {
    symbols: SymbolTable,
    names: HashMap<&'static str, datalog::SymbolIndex>,
    policies: Vec<(Verdict, Vec<datalog::Rule>)>,
    step_up: datalog::Rule,
    risk_conflict: datalog::Rule,
}

/// The fact predicates the engine adds (the list at the top of the contract).
const FACT_NAMES: [&str; 18] = [
    "exchange",
    "principal",
    "principal_type",
    "principal_label",
    "action",
    "resource",
    "requested_scopes",
    "edge_scopes",
    "presented_scopes",
    "subject_edge_id",
    "subject_target",
    "grant_owner",
    "role_scopes",
    "confinement",
    "risk_tier",
    "approval_tier",
    "restriction_entries",
    "malformed",
];

fn outcome_of(policy: &Policy) -> Result<Verdict, String> {
    let first = policy
        .queries
        .first()
        .and_then(|q| q.body.first())
        .filter(|p| p.name == "outcome")
        .ok_or("a policy does not start with its outcome")?;
    let (Some(Term::Str(kind)), Some(Term::Str(name))) = (first.terms.first(), first.terms.get(1))
    else {
        return Err("an outcome is not two strings".into());
    };
    let verdict = match (kind.as_str(), &policy.kind) {
        ("allow", PolicyKind::Allow) => Verdict::Allow(match name.as_str() {
            "bootstrap" => AllowRule::Bootstrap,
            "mint" => AllowRule::Mint,
            "workload" => AllowRule::Workload,
            "use" => AllowRule::Use,
            other => return Err(format!("unknown allow rule {other}")),
        }),
        ("deny", PolicyKind::Deny) => Verdict::Deny(
            DENY_REASONS
                .into_iter()
                .find(|r| r == name)
                .ok_or_else(|| format!("unknown deny reason {name}"))?,
        ),
        ("conflict", PolicyKind::Deny) => Verdict::Conflict(
            CONFLICTS
                .into_iter()
                .find(|r| r == name)
                .ok_or_else(|| format!("unknown conflict {name}"))?,
        ),
        (kind, _) => return Err(format!("outcome {kind}/{name} on the wrong policy kind")),
    };
    Ok(verdict)
}

/// Renames a rule's variables apart from the policy it is unfolded into.
fn rename(term: &Term, suffix: &str) -> Term {
    match term {
        Term::Variable(v) => Term::Variable(format!("{v}_{suffix}")),
        other => other.clone(),
    }
}

fn rename_op(op: &Op, suffix: &str) -> Op {
    match op {
        Op::Value(term) => Op::Value(rename(term, suffix)),
        Op::Closure(params, ops) => Op::Closure(
            params.clone(),
            ops.iter().map(|o| rename_op(o, suffix)).collect(),
        ),
        other => other.clone(),
    }
}

/// Replaces derived predicates in a body by their rule's body, recursively; the rules'
/// expressions join `expressions`.
fn unfold(
    body: &[Predicate],
    expressions: &mut Vec<Expression>,
    rules: &HashMap<String, Rule>,
    counter: &mut usize,
    depth: usize,
) -> Result<Vec<Predicate>, String> {
    if depth > 8 {
        return Err("the contract's rules nest too deep (or recurse)".into());
    }
    let mut out = Vec::with_capacity(body.len());
    for predicate in body {
        let Some(rule) = rules.get(&predicate.name) else {
            out.push(predicate.clone());
            continue;
        };
        if rule.head.terms != predicate.terms {
            return Err(format!(
                "{} is used with other terms than its rule derives",
                predicate.name
            ));
        }
        *counter += 1;
        let suffix = counter.to_string();
        let renamed: Vec<Predicate> = rule
            .body
            .iter()
            .map(|p| Predicate {
                name: p.name.clone(),
                terms: p.terms.iter().map(|t| rename(t, &suffix)).collect(),
            })
            .collect();
        for expression in &rule.expressions {
            expressions.push(Expression {
                ops: expression
                    .ops
                    .iter()
                    .map(|o| rename_op(o, &suffix))
                    .collect(),
            });
        }
        out.extend(unfold(&renamed, expressions, rules, counter, depth + 1)?);
    }
    Ok(out)
}

/// Predicates the engine adds at most once per request (`facts.rs` holds to this). Two uses of
/// one in an unfolded body therefore name the same fact, and are merged into one.
const SINGLE_VALUED: [&str; 10] = [
    "exchange",
    "principal",
    "principal_type",
    "action",
    "resource",
    "requested_scopes",
    "edge_scopes",
    "presented_scopes",
    "grant_owner",
    "restriction_entries",
];

/// The order predicates are matched in: facts that are usually absent first, so a policy
/// that cannot hold fails on its first predicate, then scalar facts, then the set-valued
/// ones last, because biscuit copies every bound value at each later join level.
const MATCH_ORDER: [&str; 18] = [
    "malformed",
    "confinement",
    "risk_tier",
    "approval_tier",
    "subject_edge_id",
    "subject_target",
    "restriction_entries",
    "exchange",
    "principal_type",
    "action",
    "resource",
    "principal",
    "grant_owner",
    "principal_label",
    "role_scopes",
    "edge_scopes",
    "presented_scopes",
    "requested_scopes",
];

fn substitute(term: &mut Term, from: &str, to: &str) {
    if let Term::Variable(v) = term {
        if v == from {
            *v = to.to_owned();
        }
    }
}

fn substitute_op(op: &mut Op, from: &str, to: &str) {
    match op {
        Op::Value(term) => substitute(term, from, to),
        Op::Closure(_, ops) => ops.iter_mut().for_each(|o| substitute_op(o, from, to)),
        _ => {}
    }
}

/// Merges repeated single-valued predicates (renaming the later one's variables to the
/// earlier one's) and orders the body rare-first. A conjunction's order does not change what
/// it matches; it only decides how early a failing policy stops.
fn simplify(body: &mut Vec<Predicate>, expressions: &mut [Expression]) {
    let mut i = 0;
    while i < body.len() {
        let single = SINGLE_VALUED.contains(&body[i].name.as_str());
        let earlier = single
            .then(|| body[..i].iter().position(|p| p.name == body[i].name))
            .flatten();
        if let Some(j) = earlier {
            let pairs: Vec<(Term, Term)> = body[j]
                .terms
                .iter()
                .cloned()
                .zip(body[i].terms.iter().cloned())
                .collect();
            let mergeable = body[j].terms.len() == body[i].terms.len()
                && pairs.iter().all(|(a, b)| match (a, b) {
                    (Term::Variable(_), Term::Variable(_)) => true,
                    (a, b) => a == b,
                });
            if mergeable {
                body.remove(i);
                for (a, b) in pairs {
                    if let (Term::Variable(to), Term::Variable(from)) = (a, b) {
                        for p in body.iter_mut() {
                            p.terms.iter_mut().for_each(|t| substitute(t, &from, &to));
                        }
                        for e in expressions.iter_mut() {
                            e.ops.iter_mut().for_each(|o| substitute_op(o, &from, &to));
                        }
                    }
                }
                continue;
            }
        }
        i += 1;
    }
    let rank = |p: &Predicate| {
        MATCH_ORDER
            .iter()
            .position(|r| *r == p.name)
            .unwrap_or(MATCH_ORDER.len())
    };
    body.sort_by_key(rank);
    canonical_variables(body, expressions);
}

/// Renames a query's variables `$v0`, `$v1`, … in order of appearance, so every policy draws
/// on the same few variable symbols and the symbol table a request extends stays small.
fn canonical_variables(body: &mut [Predicate], expressions: &mut [Expression]) {
    let mut names: Vec<String> = Vec::new();
    let mut canonical = |term: &mut Term| {
        if let Term::Variable(v) = term {
            let index = match names.iter().position(|n| n == v) {
                Some(i) => i,
                None => {
                    names.push(v.clone());
                    names.len() - 1
                }
            };
            *v = format!("v{index}");
        }
    };
    fn walk(op: &mut Op, f: &mut dyn FnMut(&mut Term)) {
        match op {
            Op::Value(term) => f(term),
            Op::Closure(_, ops) => ops.iter_mut().for_each(|o| walk(o, f)),
            _ => {}
        }
    }
    for predicate in body.iter_mut() {
        predicate.terms.iter_mut().for_each(&mut canonical);
    }
    for expression in expressions.iter_mut() {
        expression
            .ops
            .iter_mut()
            .for_each(|o| walk(o, &mut canonical));
    }
}

fn load() -> Result<Contract, String> {
    let parsed = biscuit_auth::parser::parse_source(SOURCE)
        .map_err(|errors| format!("decision contract does not parse: {errors:?}"))?;
    if !parsed.checks.is_empty() || !parsed.facts.is_empty() {
        return Err("the decision contract holds rules and policies only".into());
    }
    let mut symbols = SymbolTable::new();
    let mut rules: HashMap<String, Rule> = HashMap::new();
    let mut queries: HashMap<String, Rule> = HashMap::new();
    for (_, rule) in parsed.rules {
        let rule = Rule::from(rule);
        rule.validate_variables()?;
        if rule
            .head
            .terms
            .iter()
            .any(|t| matches!(t, Term::Variable(_)))
        {
            // A rule deriving values is a diagnostics query, run after the decision.
            queries.insert(rule.head.name.clone(), rule);
            continue;
        }
        let name = rule.head.name.clone();
        if rules.insert(name.clone(), rule).is_some() {
            return Err(format!("{name} has more than one rule"));
        }
    }
    let mut counter = 0;
    let mut policies = Vec::with_capacity(parsed.policies.len());
    for (_, policy) in parsed.policies {
        let policy = Policy::from(policy);
        let verdict = outcome_of(&policy)?;
        let mut queries = Vec::with_capacity(policy.queries.len());
        for query in &policy.queries {
            // The marker names the outcome; it is not a condition, so it is not evaluated.
            let body: Vec<Predicate> = query
                .body
                .iter()
                .filter(|p| p.name != "outcome")
                .cloned()
                .collect();
            let mut expressions = query.expressions.clone();
            let mut body = unfold(&body, &mut expressions, &rules, &mut counter, 0)?;
            simplify(&mut body, &mut expressions);
            let unfolded = Rule::new(query.head.clone(), body, expressions, query.scopes.clone());
            queries.push(unfolded.convert(&mut symbols));
        }
        policies.push((verdict, queries));
    }
    let mut query = |name: &str| {
        queries
            .remove(name)
            .map(|rule| rule.convert(&mut symbols))
            .ok_or_else(|| format!("the contract has no {name} query"))
    };
    let step_up = query("step_up")?;
    let risk_conflict = query("risk_conflict")?;
    if let Some(extra) = queries.keys().next() {
        return Err(format!("{extra} is a query the engine does not run"));
    }
    let names = FACT_NAMES
        .into_iter()
        .map(|name| (name, symbols.insert(name)))
        .collect();
    Ok(Contract {
        symbols,
        names,
        policies,
        step_up,
        risk_conflict,
    })
}

/// The contract, parsed on first use. The text is embedded, so a failure here is a build
/// defect that the unit tests catch; at run time it surfaces as an evaluation error (503).
pub(crate) fn contract() -> Result<&'static Contract, PolicyError> {
    static CONTRACT: OnceLock<Result<Contract, String>> = OnceLock::new();
    CONTRACT
        .get_or_init(load)
        .as_ref()
        .map_err(|e| PolicyError::Engine(e.clone()))
}

/// One argument of a request fact.
pub(crate) enum Arg<'a> {
    /// A string.
    Str(&'a str),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A set of strings.
    Strs(BTreeSet<&'a str>),
}

/// The request's facts, interned straight into biscuit's Datalog form (no text is parsed
/// and no intermediate builder values are cloned per request).
pub(crate) struct RequestFacts<'c> {
    contract: &'c Contract,
    symbols: SymbolTable,
    facts: FactSet,
    origin: Origin,
    count: u64,
}

impl RequestFacts<'_> {
    /// Adds `name(args…)`.
    pub(crate) fn add(&mut self, name: &'static str, args: &[Arg<'_>]) {
        let name = match self.contract.names.get(name) {
            Some(index) => *index,
            None => self.symbols.insert(name),
        };
        let terms: Vec<datalog::Term> = args
            .iter()
            .map(|arg| match arg {
                Arg::Str(s) => datalog::Term::Str(self.symbols.insert(s)),
                Arg::Int(i) => datalog::Term::Integer(*i),
                Arg::Bool(b) => datalog::Term::Bool(*b),
                Arg::Strs(items) => datalog::Term::Set(
                    items
                        .iter()
                        .map(|s| datalog::Term::Str(self.symbols.insert(s)))
                        .collect(),
                ),
            })
            .collect();
        self.facts.insert(
            &self.origin,
            datalog::Fact {
                predicate: datalog::Predicate { name, terms },
            },
        );
        self.count += 1;
    }
}

/// The verdict for one request, and the approval declarations its mint is gated by.
pub(crate) struct Evaluation {
    pub verdict: Verdict,
    pub step_up: Vec<i64>,
}

impl Evaluation {
    fn limit() -> Self {
        Self {
            verdict: Verdict::LimitExceeded,
            step_up: Vec::new(),
        }
    }
}

thread_local! {
    /// A symbol table per thread, reset to the contract's symbols after each decision, so a
    /// decision does not clone the table.
    static SPARE_SYMBOLS: RefCell<Option<SymbolTable>> = const { RefCell::new(None) };
}

/// Facts and queries of a decision live in the authorizer's own block.
const AUTHORIZER_BLOCK: usize = usize::MAX;

impl Contract {
    /// An empty fact set for one request.
    pub(crate) fn request(&self) -> RequestFacts<'_> {
        let mut origin = Origin::default();
        origin.insert(AUTHORIZER_BLOCK);
        let symbols = SPARE_SYMBOLS
            .with(|spare| spare.borrow_mut().take())
            .unwrap_or_else(|| self.symbols.clone());
        RequestFacts {
            contract: self,
            symbols,
            facts: FactSet::default(),
            origin,
            count: 0,
        }
    }

    /// Drops a request's symbols and keeps the table for the thread's next decision.
    fn recycle(&self, mut symbols: SymbolTable) {
        let base = self.symbols.current_offset();
        if symbols.current_offset() >= base {
            drop(symbols.split_at(base));
            SPARE_SYMBOLS.with(|spare| *spare.borrow_mut() = Some(symbols));
        }
    }

    /// Matches the policies in order against the request's facts, under `limits`. `gated` says
    /// whether any approval row was added, so the step-up query only runs when it can find
    /// something.
    pub(crate) fn evaluate(
        &self,
        request: RequestFacts<'_>,
        limits: &AuthorizerLimits,
        gated: bool,
    ) -> Result<Evaluation, PolicyError> {
        let RequestFacts {
            symbols,
            facts,
            count,
            ..
        } = request;
        let evaluation = self.evaluate_facts(&symbols, &facts, count, limits, gated);
        self.recycle(symbols);
        evaluation
    }

    fn evaluate_facts(
        &self,
        symbols: &SymbolTable,
        facts: &FactSet,
        count: u64,
        limits: &AuthorizerLimits,
        gated: bool,
    ) -> Result<Evaluation, PolicyError> {
        let started = Instant::now();
        if count > limits.max_facts {
            return Ok(Evaluation::limit());
        }
        let trusted = TrustedOrigins::default();
        let functions = HashMap::new();
        let mut matched = 0u64;
        let mut decided = None;
        'policies: for (verdict, queries) in &self.policies {
            for query in queries {
                matched += 1;
                if matched > limits.max_iterations || started.elapsed() >= limits.max_time {
                    return Ok(Evaluation::limit());
                }
                let holds = query
                    .find_match(facts, AUTHORIZER_BLOCK, &trusted, symbols, &functions)
                    .map_err(|e| PolicyError::Engine(e.to_string()))?;
                if holds {
                    decided = Some(*verdict);
                    break 'policies;
                }
            }
        }
        let verdict =
            decided.ok_or_else(|| PolicyError::Engine("no policy of the contract held".into()))?;
        let mint = matches!(
            verdict,
            Verdict::Allow(AllowRule::Mint | AllowRule::Workload)
        );
        let mut step_up = Vec::new();
        if mint {
            let conflict = self
                .risk_conflict
                .find_match(facts, AUTHORIZER_BLOCK, &trusted, symbols, &functions)
                .map_err(|e| PolicyError::Engine(e.to_string()))?;
            if conflict {
                return Ok(Evaluation {
                    verdict: Verdict::Conflict("risk_tier"),
                    step_up,
                });
            }
        }
        if mint && gated {
            for result in self.step_up.apply(
                facts.iterator(&trusted),
                AUTHORIZER_BLOCK,
                symbols,
                &functions,
            ) {
                let (_, fact) = result.map_err(|e| PolicyError::Engine(e.to_string()))?;
                if let Some(datalog::Term::Integer(declaration)) = fact.predicate.terms.first() {
                    step_up.push(*declaration);
                }
            }
        }
        if started.elapsed() >= limits.max_time {
            return Ok(Evaluation::limit());
        }
        Ok(Evaluation { verdict, step_up })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_parses_and_every_policy_names_its_outcome() {
        let contract = contract().expect("embedded contract loads");
        assert_eq!(contract.policies.len(), 20);
        assert_eq!(
            contract.policies.first().map(|p| p.0),
            Some(Verdict::Deny("restriction_active"))
        );
        assert_eq!(
            contract.policies.last().map(|p| p.0),
            Some(Verdict::Deny("no_rule_matched"))
        );
    }
}
