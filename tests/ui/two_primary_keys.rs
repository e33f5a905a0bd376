#[dataflow::model]
pub struct Membership {
    #[field(primary_key)]
    pub user_id: String,
    #[field(primary_key)]
    pub group_id: String,
}

fn main() {}
