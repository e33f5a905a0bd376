#[dataflow::model]
pub struct User {
    pub id: String,
    #[field(uniq)]
    pub email: String,
}

fn main() {}
