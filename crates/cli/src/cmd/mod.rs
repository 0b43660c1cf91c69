//! One module per subcommand.

pub mod admission;
pub mod battery;
pub mod bench;
pub mod contract;
pub mod coordinator;
pub mod demo;
pub mod demo_contract;
pub mod export;
pub mod gate;
pub mod hostile;
pub mod keygen;
pub mod ledger;
pub mod report;
pub mod reward;
pub mod rewards;
pub mod sample;
pub mod sim;
pub mod simnet;
pub mod tokenizer;
pub mod train;
pub mod watch_bench;
pub mod worker;
