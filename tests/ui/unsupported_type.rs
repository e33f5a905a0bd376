use std::collections::HashMap;

#[dataflow::model]
pub struct Config {
    pub id: String,
    pub values: HashMap<String, String>,
}

fn main() {}
