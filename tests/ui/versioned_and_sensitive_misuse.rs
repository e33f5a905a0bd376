#[dataflow::model(versioned)]
pub struct Doc {
    pub id: String,
    pub version: Option<String>,
}

#[dataflow::model]
pub struct Key {
    #[field(sensitive)]
    pub id: String,
}

fn main() {}
